"""STCH: smooth Tchebycheff scalarisation of the nadir-normalised log losses."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.lossweighted import TINY, LossWeighted
from mtbench.options import Option, integer


def stch_weights(losses: torch.Tensor, nadir: torch.Tensor, mu: float) -> torch.Tensor:
    """The weights w [T] of the gradient of T mu log sum_i exp(log(L_i / n_i) / mu) in the
    losses: w_i = T p_i / L_i, p = softmax(log(L / n) / mu) (losses and nadir clamped at 1e-12),
    in the losses' dtype (at least float32)."""
    dtype = torch.promote_types(losses.dtype, torch.float32)
    losses = losses.detach().to(dtype).clamp_min(TINY)
    x = losses.log() - nadir.to(device=losses.device, dtype=dtype).clamp_min(TINY).log()
    return losses.numel() * torch.softmax(x / mu, dim=0) / losses


class STCH(LossWeighted):
    """Smooth Tchebycheff scalarisation (Lin, Zhang, Liu, Yang, Wang, Zhang & Zhang 2024, "Smooth
    Tchebycheff Scalarization for Multi-Objective Optimization", ICML, eq. 9), as the authors'
    multitask code applies it: on the log losses normalised by a nadir estimate n,

        L_STCH = T mu log sum_i exp( log(L_i / n_i) / mu ),

    a smooth maximum of the normalised log losses (the Tchebycheff max_i as mu -> 0; preference
    weights 1, reference 0 in the normalised log space). Its gradient is sum_i w_i dL_i with
    w_i = T p_i / L_i, p = softmax(log(L / n) / mu): the task furthest above its nadir value
    gets most of the step.

    Warm-up: during the first ``warmup_epochs`` epochs the network is trained on sum_i log L_i
    (weights 1 / L_i, ``si``'s); the nadir n is the mean of each task's losses over the steps of
    the last warm-up epoch, and STCH starts with the next epoch. Epochs are counted by the
    trainer's ``end_epoch``; outside the trainer (no epochs) the warm-up never ends. The epoch
    count, the running sum of the losses and the nadir are combiner state, so a run resumed
    mid-epoch gives the uninterrupted run's numbers. Losses and the nadir are clamped at 1e-12
    before their logarithm.

    Scale: the authors' code and LibMTL's ``STCH`` multiply mu log sum exp by T, as here
    (factor 1): the softmax weights sum to T, so with equal normalised losses of 1 the gradient
    is the baseline's. Defaults are theirs: ``mu`` 1 and the warm-up of their
    ``STCH_warmup_epoch`` 4, which trains epochs 0-4 (five) on the log losses and averages the
    fifth's: ``warmup_epochs`` 5 here.
    """

    name = "stch"
    style = ("#e7969c", "h")
    options = {
        "mu": Option(1.0, "smoothing of the Tchebycheff maximum (smaller: closer to the max), > 0", positive()),
        "warmup_epochs": Option(
            5,
            "epochs trained on sum_i log L_i before STCH; the last one's mean losses are the nadir, an integer >= 1",
            integer(minimum=1),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: finished epochs; the nadir epoch's running loss sum [T] and steps; the nadir [T]
        self.epoch = 0
        self.loss_sum: torch.Tensor | None = None
        self.loss_steps = 0
        self.nadir: torch.Tensor | None = None

    @property
    def nadir_epoch(self) -> bool:
        """True in the last warm-up epoch, whose mean losses are the nadir."""
        return self.nadir is None and self.epoch == self.warmup_epochs - 1

    def task_weights(self, step: Step) -> torch.Tensor:
        losses = step.losses.detach().to(self.state_dtype(step.losses))
        if self.nadir is not None:
            self.nadir = self.nadir.to(device=losses.device, dtype=losses.dtype)
            return stch_weights(losses, self.nadir, self.mu)
        if self.nadir_epoch:
            if self.loss_sum is None:
                self.loss_sum = torch.zeros_like(losses)
            self.loss_sum = self.loss_sum.to(device=losses.device, dtype=losses.dtype) + losses
            self.loss_steps += 1
        return 1.0 / losses.clamp_min(TINY)

    def end_epoch(self) -> None:
        """Counts the epoch; at the end of the last warm-up epoch, its mean losses become the nadir."""
        if self.nadir_epoch and self.loss_steps > 0 and self.loss_sum is not None:
            self.nadir = self.loss_sum / self.loss_steps
            self.loss_sum, self.loss_steps = None, 0
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss_sum": None if self.loss_sum is None else self.loss_sum.clone(),
            "loss_steps": self.loss_steps,
            "nadir": None if self.nadir is None else self.nadir.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.epoch, self.loss_steps = int(state["epoch"]), int(state["loss_steps"])
        self.loss_sum = None if state["loss_sum"] is None else state["loss_sum"].clone()
        self.nadir = None if state["nadir"] is None else state["nadir"].clone()

"""FAMO: task weights that balance the rate at which the task losses fall, from the losses alone."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.learned import LearnedVector
from mtbench.combiners.lossweighted import LossWeighted
from mtbench.options import Option, number

#: added to every loss before its logarithm or a division by it
EPS = 1e-8


class FAMO(LossWeighted):
    """Fast adaptive multitask optimisation (Liu, Liu, Jin, Stone & Liu 2023, "FAMO: Fast
    Adaptive Multitask Optimization", NeurIPS, Algorithm 1). Task logits xi (0 at first),
    z = softmax(xi). The network follows the z-weighted gradient of the log-losses, rescaled:

        d = c sum_i z_i grad log L_i = sum_i w_i grad L_i,   w_i = c z_i / L_i,   c = T / sum_j (z_j / L_j),

    so each task's loss falls at a rate that z balances. The logits learn from how the
    log-losses moved: with delta_i = log L_i(previous step) - log L_i(this step), they take
    one step of their own Adam (``weight_lr``, weight decay ``gamma``) on J^T delta, J the
    Jacobian of softmax at xi, that is z * (delta - z . delta): a task whose loss fell
    faster than the z-weighted mean loses weight. Each step first updates the logits from
    the previous step's losses (from the second step on), then weights this step's losses.
    The logits, their optimiser's state and the previous step's losses are combiner state.
    Losses get 1e-8 added (the paper's losses are positive; its lower bounds are 0 here).

    Against the paper and its code: the paper's weights c z_i / L_i with c = 1 / sum_j z_j / L_j
    sum to 1; mtbench's c has T in the numerator, so its weights sum to T (with equal losses
    and equal z, all 1: the baseline's gradient); LibMTL's FAMO keeps the paper's scale, 1/T
    of this gradient (and a weight decay of 1e-3 by default). The official code evaluates the losses at
    the updated parameters on the same batch (a second forward pass after the optimizer
    step); here delta compares this step's losses (the next batch, after the update) with the
    previous step's, which costs no extra forward pass but also holds the batch-to-batch
    noise. Its defaults are those of the official code (``weight_lr`` 0.025, ``gamma`` 0.01);
    its optional clipping of the gradient norm is not part of this combiner (``combiner=clip``
    clips).
    """

    name = "famo"
    style = ("#637939", "4")
    options = {
        "weight_lr": Option(0.025, "learning rate of the task logits (their own Adam)", positive()),
        "gamma": Option(0.01, "weight decay of the task logits (their Adam's), >= 0", number(minimum=0)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.learned = LearnedVector(
            "logits", self.num_tasks, on_load=self._load_prev_losses, lr=self.weight_lr, weight_decay=self.gamma
        )
        #: the previous step's losses (detached), None before the first step
        self.prev_losses: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        """The task logits xi (on the training device from the first step)."""
        return self.learned.value

    def task_weights(self, step: Step) -> torch.Tensor:
        losses = step.losses.detach()
        logits = self.learned.ready(losses)
        losses = losses.to(logits.dtype)
        log = (losses + EPS).log()
        if self.prev_losses is not None:  # the logits' step on how the log-losses moved
            delta = (self.prev_losses + EPS).log() - log
            z = torch.softmax(logits.detach(), dim=0)
            self.learned.update(z * (delta - (z * delta).sum()))
        z = torch.softmax(logits.detach(), dim=0)
        q = z / (losses + EPS)
        self.prev_losses = losses.clone()
        return q * (self.num_tasks / q.sum())

    def state_dict(self) -> dict[str, Any]:
        return self.learned.state_dict(extra={"prev_losses": self.prev_losses})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learned.load_state_dict(state)

    def _load_prev_losses(self, state: dict[str, Any]) -> None:
        logits = self.learned.value
        assert logits is not None
        prev = state["prev_losses"]
        self.prev_losses = None if prev is None else prev.to(device=logits.device, dtype=logits.dtype)

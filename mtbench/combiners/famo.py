"""FAMO: task weights that balance the rate at which the task losses fall, from the losses alone."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtbench.combiners.base import Step, positive
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
        #: the task logits xi (on the training device from the first step)
        self.logits: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        #: the previous step's losses (detached), None before the first step
        self.prev_losses: torch.Tensor | None = None
        self._pending_state: dict[str, Any] | None = None

    def _setup(self, like: torch.Tensor) -> None:
        self.logits = torch.zeros(self.num_tasks, device=like.device, dtype=self.state_dtype(like), requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=self.weight_lr, weight_decay=self.gamma)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def task_weights(self, step: Step) -> torch.Tensor:
        losses = step.losses.detach()
        if self.logits is None:
            self._setup(losses)
        assert self.logits is not None and self.optimizer is not None
        losses = losses.to(self.logits.dtype)
        log = (losses + EPS).log()
        if self.prev_losses is not None:  # the logits' step on how the log-losses moved
            delta = (self.prev_losses + EPS).log() - log
            z = torch.softmax(self.logits.detach(), dim=0)
            self.logits.grad = z * (delta - (z * delta).sum())
            self.optimizer.step()
        z = torch.softmax(self.logits.detach(), dim=0)
        q = z / (losses + EPS)
        self.prev_losses = losses.clone()
        return q * (self.num_tasks / q.sum())

    def state_dict(self) -> dict[str, Any]:
        if self.logits is None:
            return {}
        assert self.optimizer is not None
        state = {
            "logits": self.logits.detach(),
            "optimizer": self.optimizer.state_dict(),
            "prev_losses": self.prev_losses,
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.logits is None:  # the logits live on the training device: restore at the first step
            self._pending_state = state
            return
        assert self.optimizer is not None
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        prev = state["prev_losses"]
        self.prev_losses = None if prev is None else prev.to(device=self.logits.device, dtype=self.logits.dtype)

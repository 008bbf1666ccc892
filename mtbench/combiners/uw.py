"""UW: task weights from learned homoscedastic uncertainties (log-variances)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.lossweighted import LossWeighted
from mtbench.options import Option


class UW(LossWeighted):
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR, eq. 7 and 10): each
    task has a learned noise scale sigma_i, and the objective is

        L_UW = sum_i  L_i / sigma_i^2 + log sigma_i  =  sum_i  exp(-s_i) L_i + s_i / 2,

    with s_i = log sigma_i^2 learned (the paper's parametrisation, for numerical stability),
    starting at s_i = 0 (sigma_i = 1). The network is trained on sum_i w_i L_i with
    w_i = exp(-s_i) at this step's s; the log-variances take one step of their own Adam
    (``weight_lr``) on the gradient of L_UW, 1/2 - exp(-s_i) L_i (computed in closed form
    from the detached losses: no second backward pass). At rest exp(-s_i) = 1 / (2 L_i).

    Scale: the weights start at 1 (the baseline's gradient at the first step) and the
    regulariser is the paper's, log sigma_i. The paper's regression form
    L_i / (2 sigma_i^2) + log sigma_i is the same objective in r_i = s_i - log 2 (up to a
    constant), so it differs only by where the weights start: LibMTL's UW, that form with
    r_i = -0.5 at first, is this one started at s_i = log 2 - 0.5 (weights 0.82). The paper
    and LibMTL learn s with the network's optimiser; mtbench's optimizer holds the network's
    parameters only, so s has its own Adam, whose default learning rate is the trainer's
    default ``trainer.lr``. The log-variances and their optimiser are combiner state.
    """

    name = "uw"
    style = ("#8c6d31", "x")
    options = {
        "weight_lr": Option(0.003, "learning rate of the log-variances s_i (their own Adam)", positive()),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the log-variances s_i = log sigma_i^2 (on the training device from the first step)
        self.log_var: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def _setup(self, like: torch.Tensor) -> None:
        self.log_var = torch.zeros(self.num_tasks, device=like.device, dtype=self.state_dtype(like), requires_grad=True)
        self.optimizer = torch.optim.Adam([self.log_var], lr=self.weight_lr)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def task_weights(self, step: Step) -> torch.Tensor:
        """w = exp(-s) at this step's s; then one Adam step of s on the gradient of L_UW."""
        losses = step.losses.detach()
        if self.log_var is None:
            self._setup(losses)
        assert self.log_var is not None and self.optimizer is not None
        losses = losses.to(self.log_var.dtype)
        w = torch.exp(-self.log_var.detach())
        self.log_var.grad = 0.5 - w * losses  # d/ds [exp(-s) L + s / 2]
        self.optimizer.step()
        return w

    def state_dict(self) -> dict[str, Any]:
        if self.log_var is None:
            return {}
        assert self.optimizer is not None
        return copy.deepcopy({"log_var": self.log_var.detach(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.log_var is None:  # the log-variances live on the training device: restore at the first step
            self._pending_state = state
            return
        assert self.optimizer is not None
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])
        self.optimizer.load_state_dict(state["optimizer"])

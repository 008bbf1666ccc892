"""UW: task weights from learned homoscedastic uncertainties (log-variances)."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.learned import LearnedVector
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
        self.learned = LearnedVector("log_var", self.num_tasks, lr=self.weight_lr)

    @property
    def log_var(self) -> torch.Tensor | None:
        """The log-variances s_i = log sigma_i^2 (on the training device from the first step)."""
        return self.learned.value

    def task_weights(self, step: Step) -> torch.Tensor:
        """w = exp(-s) at this step's s; then one Adam step of s on the gradient of L_UW."""
        losses = step.losses.detach()
        log_var = self.learned.ready(losses)
        losses = losses.to(log_var.dtype)
        w = torch.exp(-log_var.detach())
        self.learned.update(0.5 - w * losses)  # d/ds [exp(-s) L + s / 2]
        return w

    def state_dict(self) -> dict[str, Any]:
        return self.learned.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learned.load_state_dict(state)

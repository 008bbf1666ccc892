"""UPGrad: every task gradient projected onto the dual cone of all of them, the projections summed."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import upgrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted


class UPGrad(GramWeighted):
    """UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", eq. 5).

    Each g_i is projected onto the dual cone {x : g_j . x >= 0 for every j} of the task
    gradients and the projections are summed: the result conflicts with no task. The weights
    come from torchjd's ``UPGradWeighting`` (its quadprog solver of the dual problem) fed the
    Gram matrix of the unit gradients g_i / ||g_i|| (the same dual cone) plus 1e-9 I, from
    mtbench's float64 Gram matrix (:func:`functional.upgrad_weights_from_gram`; torchjd's
    default ridge, 1e-4 on the raw Gram matrix divided by its trace, leaves a task 1e4 times
    smaller than another practically unconstrained). Scale: T times torchjd's ``UPGrad()`` (which
    averages the projections); equal agreeing gradients give the baseline's sum. Options: those
    of :class:`GramWeighted`, ``level`` defaulting to ``representation``.
    """

    name = "upgrad"
    style = ("#e377c2", "<")
    options = GramWeighted.level_default("representation")

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        upgrad_weights_from_gram(torch.eye(1, dtype=torch.float64))  # a missing solver fails here, before the run

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return upgrad_weights_from_gram(gram)

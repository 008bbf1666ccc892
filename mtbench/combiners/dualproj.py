"""DualProj: the summed gradient projected onto the dual cone of the task gradients (GEM's projection)."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import dualproj_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted


class DualProj(GramWeighted):
    """DualProj: the projection of GEM (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for
    Continual Learning", eq. 11) applied to the summed gradient: the closest vector to
    sum_i g_i with g_j . x >= 0 for every task j.

    The weights come from torchjd's ``DualProjWeighting`` (quadprog on the dual problem) fed
    the unit gradients' Gram matrix plus 1e-9 I, from mtbench's float64 Gram matrix
    (:func:`functional.dualproj_weights_from_gram`, as for ``upgrad``). Scale: T times torchjd's ``DualProj()``
    (which projects the mean); with no conflict it is exactly the baseline's sum. Options:
    those of :class:`GramWeighted`, ``level`` defaulting to ``representation``.
    """

    name = "dualproj"
    style = ("#7f7f7f", ">")
    options = GramWeighted.level_default("representation")

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        dualproj_weights_from_gram(torch.eye(1, dtype=torch.float64))  # a missing solver fails here

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return dualproj_weights_from_gram(gram)

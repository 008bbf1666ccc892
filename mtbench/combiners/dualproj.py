"""DualProj: the summed gradient projected onto the dual cone of the task gradients (GEM's projection)."""

from __future__ import annotations

from torch import Tensor

from mtbench.combiners.rows import (
    _combine_rows,
)
from mtbench.combiners.solvers.dual_cone import dual_cone_state
from mtbench.combiners.upgrad import DualConeWeighted


def dualproj_weights_from_gram(gram: Tensor, solver: str = "active_set") -> Tensor:
    """DualProj (GEM's projection, Lopez-Paz & Ranzato 2017, eq. 11, of the summed gradient):
    T times torchjd's ``DualProjWeighting`` (the mean projected onto the dual cone), on the
    unit gradients as for :func:`upgrad_weights_from_gram` (same solvers)."""
    return dual_cone_state(gram, "dualproj", solver)[0]


def dualproj(grads: Tensor, solver: str = "active_set") -> Tensor:
    """DualProj of the rows of ``grads``: sum_i g_i projected onto the dual cone of the g_j
    (T x torchjd's ``DualProj()``, up to its ridge)."""
    return _combine_rows(grads, "dualproj", dualproj_weights_from_gram, solver=solver)


class DualProj(DualConeWeighted):
    """DualProj: the projection of GEM (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for
    Continual Learning", eq. 11) applied to the summed gradient: the closest vector to
    sum_i g_i with g_j . x >= 0 for every task j.

    The weights solve torchjd's ``DualProjWeighting`` QP (the dual problem) on the unit
    gradients' Gram matrix plus 1e-9 I, from mtbench's float64 Gram matrix
    (:func:`functional.dualproj_weights_from_gram`, as for ``upgrad``): by mtbench's block
    principal pivoting (``solver: active_set``, the default, warm-started) or torchjd's quadprog
    (``solver: quadprog``). Scale: T times torchjd's ``DualProj()`` (which projects the mean);
    with no conflict it is exactly the baseline's sum. Options: those of :class:`GramWeighted`,
    ``level`` defaulting to ``representation``, and ``solver``.
    """

    name = "dualproj"
    style = ("#7f7f7f", ">")
    method = "dualproj"

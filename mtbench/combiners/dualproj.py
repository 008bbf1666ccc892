"""DualProj: the summed gradient projected onto the dual cone of the task gradients (GEM's projection)."""

from __future__ import annotations

from mtbench.combiners.upgrad import DualConeWeighted


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

"""UPGrad: every task gradient projected onto the dual cone of all of them, the projections summed."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.combiners.rows import (
    _combine_rows,
)
from mtbench.combiners.solvers.dual_cone import DUAL_CONE_SOLVERS, dual_cone_state
from mtbench.options import Option


def upgrad_weights_from_gram(gram: Tensor, solver: str = "active_set") -> Tensor:
    """UPGrad (Quinton & Rey 2024): the mean of the projections of every g_i onto the dual cone
    of all the g_j, times T, computed on the unit gradients' Gram matrix plus 1e-9 I
    (``DUAL_CONE_REG``; :func:`dual_cone_state`): by mtbench's block principal pivoting
    (``solver="active_set"``) or torchjd's ``UPGradWeighting`` with quadprog (``"quadprog"``),
    the same QPs. torchjd's default ``UPGrad()`` regularises the raw Gram matrix divided by its
    trace by 1e-4 I, which differs by about 1e-4 and leaves a task 1e4 times smaller than another
    practically unconstrained."""
    return dual_cone_state(gram, "upgrad", solver)[0]


def upgrad(grads: Tensor, solver: str = "active_set") -> Tensor:
    """UPGrad of the rows of ``grads`` [T, D]: the sum of the projections of the g_i onto the
    dual cone {x : g_j . x >= 0 for all j} (T x torchjd's ``UPGrad()``, up to its ridge)."""
    return _combine_rows(grads, "upgrad", upgrad_weights_from_gram, solver=solver)


class DualConeWeighted(WarmStarted):
    """A combination from projections onto the dual cone {x : g_j . x >= 0 for every j} of the
    task gradients (UPGrad, DualProj): :func:`functional.dual_cone_state` from the step's float64
    Gram matrix, each solve warm-started from the last one's free sets (the combiner's state,
    saved in checkpoints; the QPs have one solution, so the start changes the work only)."""

    #: ``"upgrad"`` or ``"dualproj"``
    method: ClassVar[str] = ""
    start_dtype = torch.bool
    options = {
        **GramWeighted.level_default("representation"),
        "solver": Option(
            "active_set",
            "active_set: mtbench's block principal pivoting, all QPs at once; quadprog: torchjd's",
            one_of(*DUAL_CONE_SOLVERS),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        # a missing solver fails here, before the run (quadprog is the active set's fallback too)
        dual_cone_state(torch.eye(1, dtype=torch.float64), self.method, "quadprog")

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.start = dual_cone_state(gram, self.method, self.solver, start=self.start)
        return weights


class UPGrad(DualConeWeighted):
    """UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", eq. 5).

    Each g_i is projected onto the dual cone {x : g_j . x >= 0 for every j} of the task
    gradients and the projections are summed: the result conflicts with no task. The weights
    solve torchjd's ``UPGradWeighting`` QPs (the dual problem, one per task) on the Gram matrix
    of the unit gradients g_i / ||g_i|| (the same dual cone) plus 1e-9 I, from mtbench's float64
    Gram matrix (:func:`functional.upgrad_weights_from_gram`): by mtbench's block principal
    pivoting on all T QPs at once (``solver: active_set``, the default; warm-started from the
    last step) or torchjd's quadprog (``solver: quadprog``); the same solution to rounding.
    torchjd's default ridge, 1e-4 on the raw Gram matrix divided by its trace, leaves a task 1e4
    times smaller than another practically unconstrained. Scale: T times torchjd's ``UPGrad()``
    (which averages the projections); equal agreeing gradients give the baseline's sum.
    Options: those of :class:`GramWeighted`, ``level`` defaulting to ``representation``, and
    ``solver``.
    """

    name = "upgrad"
    style = ("#e377c2", "<")
    method = "upgrad"

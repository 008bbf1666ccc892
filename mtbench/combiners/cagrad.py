"""CAGrad: the update that best improves the worst task within a ball around the mean gradient."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.combiners.rows import (
    _check_option,
    _combine_rows,
)
from mtbench.combiners.solvers.cagrad_dual import _CAGRAD_FRONT, _cagrad_dual
from mtbench.combiners.solvers.dual_cone import _dual_cone
from mtbench.combiners.solvers.min_norm import _warm_support
from mtbench.options import Option, number

CAGRAD_SOLVERS = ("active_set", "cvxpy")


def cagrad_weights_from_gram(gram: Tensor, c: float = 0.4, solver: str = "active_set") -> Tensor:
    """CAGrad (Liu et al. 2021, Algorithm 1): T / (1 + c) times the weights of
    d = g0 + sqrt(phi) / ||g_w|| g_w, g0 the mean gradient, sqrt(phi) = c ||g0||, g_w = sum_i w_i g_i
    with w on the simplex minimising g_w . g0 + sqrt(phi) ||g_w|| (the dual problem). Equal
    agreeing gradients give d = (1 + c) g0, so the factor T / (1 + c) puts them at the
    baseline's sum (the authors' code's ``rescale=2`` divides by 1 + c too).

    Solvers of the dual problem, on the Gram matrix scaled to trace 1 (torchjd's scaling):

    * ``active_set`` (default): mtbench's own, exact to rounding: the dual's optimality
      conditions are MGDA's min-norm problem on the shifted points g_i + t g0 with the one
      extra equation ||g_w|| = c ||g0|| t, which is a quadratic in t while the active set stays
      the same; each candidate is certified by the optimality conditions, else the failed
      certificate or Wolfe's algorithm at that t gives the next active set
      (:func:`cagrad_state`; warm-started from the last step's weights).
    * ``cvxpy``: torchjd's ``CAGradWeighting(c)`` (cvxpy's CLARABEL interior-point solver).

    On the Pareto front (the dual's optimum has g_w = 0, e.g. with a zero task or
    0 inside the hull and c >= 1: ||g_w|| < 1e-6 on the trace-1 scale) the formula is 0 / 0 and
    every d in the ball with g_i . d >= 0 for all i is optimal; mtbench takes the one nearest
    g0, the projection of g0 onto the dual cone (DualProj's update, divided by 1 + c). torchjd
    returns zero weights there, and also wherever ||g_w|| < 1e-4 (e.g. a task 1e4 times larger
    than the rest) or the trace of the Gram matrix itself is below 1e-4 (small gradients);
    the authors' code returns about g0 + c ||g0|| times an unresolved direction."""
    return cagrad_state(gram, c, solver)[0]


def cagrad_state(
    gram: Tensor, c: float = 0.4, solver: str = "active_set", start: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """:func:`cagrad_weights_from_gram` and the dual problem's simplex weights (the next
    solve's ``start``: their tasks are the first active set; None for the cvxpy solver)."""
    return cagrad_solve(gram, c, solver, start)[:2]


def cagrad_solve(
    gram: Tensor,
    c: float = 0.4,
    solver: str = "active_set",
    start: Tensor | None = None,
    front_start: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`cagrad_state`, and the free set of the Pareto front's dual-cone projection
    (:func:`dual_cone_state`'s state, None where the step was not on the front), which
    ``front_start`` gives back to the next front step's projection (the combiner keeps both)."""
    from mtbench.combiners.jd import gram_np64, weighting

    _check_option(
        "cagrad",
        "c",
        c,
        isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0,
        "a finite number >= 0",
    )
    _check_option("cagrad", "solver", solver, solver in CAGRAD_SOLVERS, "one of " + ", ".join(CAGRAD_SOLVERS))
    g = gram_np64(gram, "cagrad")
    n_tasks = g.shape[0]
    factor = n_tasks / (1.0 + float(c))
    if solver == "cvxpy":
        return weighting("CAGradWeighting", "cagrad", c=float(c))(torch.from_numpy(g)) * factor, None, None
    trace = float(g.diagonal().sum())
    gn = g / trace if trace > 0 else None
    if gn is None or c == 0 or not float(gn.mean()) > 0:
        # c = 0, zero gradients or a zero mean gradient: d = g0
        return torch.full((n_tasks,), factor / n_tasks, dtype=torch.float64), None, None
    w, t = _cagrad_dual(gn, float(c), _warm_support(start, n_tasks))
    g_w = math.sqrt(max(float(w @ gn @ w), 0.0))
    if t == 0 or g_w < _CAGRAD_FRONT:  # the Pareto front: g0 projected onto the dual cone
        projected, front = _dual_cone(g, "dualproj", "active_set", front_start)
        return projected / (1.0 + float(c)), None, front
    sqrt_phi = float(c) * math.sqrt(float(gn.mean()))
    return torch.from_numpy(1.0 / n_tasks + (sqrt_phi / g_w) * w) * factor, torch.from_numpy(w), None


def cagrad(grads: Tensor, c: float = 0.4, solver: str = "active_set") -> Tensor:
    """CAGrad of the rows of ``grads`` (see :func:`cagrad_weights_from_gram` for the solvers
    and the scale): T / (1 + c) x torchjd's ``CAGrad(c)``."""
    return _combine_rows(grads, "cagrad", cagrad_weights_from_gram, c=c, solver=solver)


class CAGrad(WarmStarted):
    """CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
    Algorithm 1): d = g0 + (sqrt(phi) / ||g_w||) g_w, g0 the mean gradient, sqrt(phi) = c ||g0||,
    g_w = sum_i w_i g_i with w on the simplex minimising g_w . g0 + sqrt(phi) ||g_w||.

    mtbench's own solver computes the weights from the float64 Gram matrix (``solver: active_set``,
    :func:`functional.cagrad_weights_from_gram`): the dual problem is MGDA's min-norm problem on
    the points g_i + t g0 plus one equation in t, solved exactly along its active sets with
    Wolfe's algorithm, each solve warm-started from the last step's weights (the combiner's
    state, saved in checkpoints). ``solver: cvxpy`` is torchjd's ``CAGradWeighting(c)``
    (cvxpy's CLARABEL), the same weights to its interior-point tolerance (about 1e-4 relative
    on the worst task's progress), far slower (rows ``cagrad`` and ``cagrad-cvxpy`` of
    ``scripts/bench_solvers.py``). On the Pareto front
    (the dual's optimum at g_w = 0) d is g0 projected onto the dual cone, the optimal update
    nearest g0 (torchjd: zero).

    Scale: T / (1 + c) times the paper's d (and torchjd's ``CAGrad(c)``): equal agreeing
    gradients give d = (1 + c) g, here the baseline's sum T g (the authors' code's
    ``rescale=2`` divides by 1 + c too). Options: those of :class:`GramWeighted` (``level``
    defaulting to ``representation``), ``c`` >= 0 (0: the mean gradient) and ``solver``.
    """

    name = "cagrad"
    style = ("#98df8a", "H")
    options = {
        **GramWeighted.level_default("representation"),
        "c": Option(
            0.4,
            "radius of the ball around the mean gradient, relative to its norm (>= 0; the paper's 0.4)",
            number(minimum=0),
        ),
        "solver": Option(
            "active_set",
            "active_set: mtbench's exact solve (warm-started); cvxpy: torchjd's CLARABEL solve",
            one_of(*CAGRAD_SOLVERS),
        ),
    }

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        #: the free set of the last Pareto-front step's dual-cone projection (its next start)
        self.front: torch.Tensor | None = None
        # a missing solver fails here
        cagrad_weights_from_gram(torch.eye(1, dtype=torch.float64), c=self.c, solver=self.solver)

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.start, front = cagrad_solve(gram, self.c, self.solver, self.start, self.front)
        if front is not None:
            self.front = front
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "front": None if self.front is None else self.front.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        front = state.get("front")
        self.front = None if front is None else torch.as_tensor(front, dtype=torch.bool).clone()

"""CAGrad: the update that best improves the worst task within a ball around the mean gradient."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.combiners.rows import (
    _check_option,
    _combine_rows,
)
from mtbench.combiners.solvers.dual_cone import _dual_cone
from mtbench.combiners.solvers.min_norm import (
    _BLOCK_PIVOTS,
    _COMPILED_BELOW,
    _DEFAULT_MGDA_MAX_ITER,
    _DEFAULT_MGDA_TOL,
    _GAP_FLOOR,
    _matvec,
    _next_active_set,
    _solve,
    _warm_support,
    _wolfe,
)
from mtbench.options import Option, number

CAGRAD_SOLVERS = ("active_set", "cvxpy")
#: a ||g_w|| below it (the Gram matrix scaled to trace 1) is zero: the Pareto front (float64
#: Gram entries resolve ||g_w||^2 to about 1e-16, so ||g_w|| to about 1e-8)
_CAGRAD_FRONT = 1e-6
_CAGRAD_MAX_ITER = 100


def _cagrad_piece(g: np.ndarray, a: np.ndarray, s: float, support: list[int]) -> tuple[float, np.ndarray] | None:
    """The root t > 0 of ||g_w(t)|| = s t along the piece of the path on which ``support`` is
    the active set, and w(t) there; None if the piece's equation has no such root.

    On that piece w(t) = w0 + t w1 is affine (the KKT system of min ||g_w + t g0||^2 over the
    affine hull of ``support``, right-hand sides [0; 1] and [-a_S; 0]), so
    ||g_w(t)||^2 - s^2 t^2 = A + 2 B t + (C - s^2) t^2 is a quadratic: its root where it turns
    negative (the dual's h(t) = ||g_w(t)|| / t - s is non-increasing in t)."""
    m = len(support)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = g[np.ix_(support, support)]
    kkt[:m, m] = -1.0
    kkt[m, :m] = 1.0
    rhs = np.zeros((m + 1, 2))
    rhs[m, 0] = 1.0
    rhs[:m, 1] = -a[support]
    sol = _solve(kkt, rhs)
    if not bool(np.isfinite(sol).all()):
        return None
    w0, w1 = sol[:m, 0], sol[:m, 1]
    gs = kkt[:m, :m]
    g01 = _matvec(gs, sol[:m])  # [G_S w0, G_S w1]
    g0w, g1w = g01[:, 0], g01[:, 1]
    quad_a, quad_b, quad_c = float(w0 @ g0w), float(w0 @ g1w), float(w1 @ g1w) - s * s
    # roots of quad_a + 2 quad_b t + quad_c t^2 (numerically stable form)
    disc = quad_b * quad_b - quad_a * quad_c
    if disc < 0:
        return None
    q = -(quad_b + math.copysign(math.sqrt(disc), quad_b))
    roots = [r for r in ((q / quad_c) if quad_c != 0 else math.inf, (quad_a / q) if q != 0 else math.inf)]
    falling = [r for r in roots if math.isfinite(r) and r > 0 and quad_b + quad_c * r <= 0]
    if not falling:
        return None
    t = min(falling)
    return t, w0 + t * w1


def _cagrad_candidate_np(
    g: np.ndarray, a: np.ndarray, s: float, n0: float, support: list[int], lo: float, hi: float, diag: np.ndarray
) -> tuple[int, float, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mtbench.combiners.loops.cagrad_candidate` in NumPy (from ``_COMPILED_BELOW`` tasks
    on, and where the piece's system is singular: least squares): the piece's root in
    [lo, hi] (code 0: none) and its certificate (1: certified, 2: not)."""
    piece = _cagrad_piece(g, a, s, support)
    if piece is None or not lo * (1 - 1e-12) <= piece[0] <= hi * (1 + 1e-12):
        return 0, 0.0, np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    t, w_t = piece
    negative = w_t < -1e-12 * float(np.abs(w_t).max())
    w_c = np.clip(w_t, 0.0, None)
    w_c = w_c / w_c.sum()
    # the min-norm optimality at t of every task: (G_t w)_j >= w^T G_t w
    gw = _matvec(g[:, support], w_c)
    aw = float(a[support] @ w_c)
    gtw = gw + t * a + t * (aw + t * n0)
    obj = float(w_c @ gw[support]) + 2 * t * aw + t * t * n0
    floor = _GAP_FLOOR * float((diag + 2 * t * a + t * t * n0).max())
    violated = gtw < obj - max(_DEFAULT_MGDA_TOL * obj, floor)
    return (2 if bool(negative.any()) or bool(violated.any()) else 1), t, w_c, negative, violated


def _cagrad_dual(g: np.ndarray, c: float, start: tuple[list[int], np.ndarray] | None) -> tuple[np.ndarray, float]:
    """The simplex weights w minimising g_w . g0 + c ||g0|| ||g_w|| (CAGrad's dual problem,
    ``g`` the float64 Gram matrix scaled to trace 1) and t = ||g_w|| / (c ||g0||); t = 0 when
    ||g_w|| is below the Pareto-front threshold.

    For mu = 1 / t > 0 the dual's optimality conditions are those of
    min_w g_w . g0 + (mu / 2) ||g_w||^2 = (mu / 2) ||g_w + t g0||^2 - const, i.e. MGDA's
    min-norm problem on the points g_i + t g0 (the projection of -t g0 onto the hull of the
    g_i), with the extra equation ||g_w|| = c ||g0|| t. Along t the active set changes finitely
    often and on each piece the equation is a quadratic (:func:`_cagrad_piece`), so: solve it
    on the current active set and certify the result (weights >= 0, the min-norm optimality of
    every task at that t). A failed certificate first gives the next active set to try at once
    (the negative weights dropped, the violated tasks added; up to ``_BLOCK_PIVOTS`` times),
    then Wolfe's algorithm at that t (warm) gives it, keeping a bracket [lo, hi] of the root
    (bisection when a piece's root falls outside it). Only a certified solution is returned
    before ``_CAGRAD_MAX_ITER`` iterations."""
    n_tasks = g.shape[0]
    a = g.mean(axis=1)  # a_i = g_i . g0
    n0 = float(a.mean())  # ||g0||^2
    s = c * math.sqrt(max(n0, 0.0))
    diag = g.diagonal()
    # every ||g_i|| <= 1, so the root t* = ||g_w*|| / s lies in (0, 1 / s]; below t_front,
    # ||g_w*|| is below the Pareto-front threshold
    lo, hi, t_front = 0.0, 1.0 / s, _CAGRAD_FRONT / s
    if start is None:  # far along the path, the projection of -t g0 is the vertex of least g_i . g0
        support, w_s = [int(np.argmin(a))], np.ones(1)
    else:
        support, w_s = start
    t = hi
    pivots = _BLOCK_PIVOTS
    compiled = n_tasks < _COMPILED_BELOW
    if compiled:
        from mtbench.combiners.loops import cagrad_candidate
    for iteration in range(_CAGRAD_MAX_ITER):
        code = 3
        if compiled:  # the same candidate and certificate in one compiled call
            code, t_c, w_c, negative, violated = cagrad_candidate(
                g, a, s, n0, np.asarray(support, dtype=np.int64), lo, hi, _DEFAULT_MGDA_TOL, _GAP_FLOOR
            )
        if code == 3:
            code, t_c, w_c, negative, violated = _cagrad_candidate_np(g, a, s, n0, support, lo, hi, diag)
        if code == 1:
            w = np.zeros(n_tasks)
            w[support] = w_c
            return w, t_c
        if code == 2:
            t = t_c
            if pivots > 0:  # guess the next active set at once: drop the negative, add the violated
                pivots -= 1
                keep, added = _next_active_set(support, negative, violated)
                if keep or added:
                    w_keep = w_c[~negative]
                    support = keep + added
                    w_s = np.concatenate([w_keep / w_keep.sum() if keep else w_keep, np.zeros(len(added))])
                    if not keep:
                        w_s[0] = 1.0
                    continue
            if iteration >= _CAGRAD_MAX_ITER // 2:  # (slow progress: bisect from now on)
                t = 0.5 * hi if lo == 0 else math.sqrt(lo * hi)
        else:  # no usable root on this piece: bisect
            t = 0.5 * hi if lo == 0 else math.sqrt(lo * hi)
        # the active set at t, and which side of the root t is on
        gt = g + t * (a[:, None] + a[None, :]) + t * t * n0
        support, w_s = _wolfe(
            gt / float(gt.diagonal().max()), _DEFAULT_MGDA_TOL, _DEFAULT_MGDA_MAX_ITER, (support, w_s)
        )
        r = math.sqrt(max(float(w_s @ g[np.ix_(support, support)] @ w_s), 0.0))
        if r > s * t:
            lo = t
        else:
            hi = t
        if hi <= t_front:  # the root lies below the threshold: the Pareto front
            return np.full(n_tasks, 1.0 / n_tasks), 0.0
    w = np.zeros(n_tasks)
    w[support] = w_s
    return w, t


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

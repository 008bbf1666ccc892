"""CAGrad's dual problem: the simplex weights minimising g_w . g0 + c ||g0|| ||g_w||, exact to
rounding by an active-set path in t = 1 / mu over MGDA's min-norm problem on shifted points
(:func:`_cagrad_dual`); one candidate a compiled call below ``COMPILED_BELOW`` tasks
(:mod:`mtbench.combiners.solvers.cagrad_dual_compiled`), NumPy above.

Both forms timed on both sides of the switch: docs/performance.md, "Compiled and batched forms
of one solver" (``python scripts/bench_solvers.py --forms``).
"""

from __future__ import annotations

import math

import numpy as np

from mtbench.combiners.solvers.min_norm import (
    _BLOCK_PIVOTS,
    _COMPILED_BELOW,
    _DEFAULT_MGDA_MAX_ITER,
    _DEFAULT_MGDA_TOL,
    _GAP_FLOOR,
    _matvec,
    _next_active_set,
    _solve,
    _wolfe,
)

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
    """:func:`~mtbench.combiners.solvers.cagrad_dual_compiled.cagrad_candidate` in NumPy (from ``_COMPILED_BELOW`` tasks
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
        from mtbench.combiners.solvers.cagrad_dual_compiled import cagrad_candidate
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

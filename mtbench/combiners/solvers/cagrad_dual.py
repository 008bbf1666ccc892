"""CAGrad's dual problem: the simplex weights minimising g_w . g0 + c ||g0|| ||g_w||, exact to
rounding by an active-set path in t = 1 / mu over MGDA's min-norm problem on shifted points
(:func:`_cagrad_dual`); each candidate one compiled call
(:mod:`mtbench.combiners.solvers.cagrad_dual_compiled`; why one form: docs/performance.md,
"Compiled and batched forms of one solver")."""

from __future__ import annotations

import math

import numpy as np

from mtbench.combiners.solvers.min_norm import (
    _DEFAULT_MGDA_MAX_ITER,
    _DEFAULT_MGDA_TOL,
    _GAP_FLOOR,
    _wolfe,
)

#: a ||g_w|| below it (the Gram matrix scaled to trace 1) is zero: the Pareto front (float64
#: Gram entries resolve ||g_w||^2 to about 1e-16, so ||g_w|| to about 1e-8)
_CAGRAD_FRONT = 1e-6
_CAGRAD_MAX_ITER = 100
#: block pivots (the next active set guessed from a failed certificate) before Wolfe's algorithm
_BLOCK_PIVOTS = 5


def _next_active_set(support: list[int], negative: np.ndarray, violated: np.ndarray) -> tuple[list[int], list[int]]:
    """A block pivot's next guess after a failed certificate: the support's tasks whose weight
    is not ``negative`` (kept, in order), and the ``violated`` tasks [T] not among them (added)."""
    kept = [i for i, neg in zip(support, negative.tolist()) if not neg]
    seen = set(kept)
    return kept, [int(j) for j in np.flatnonzero(violated) if int(j) not in seen]


def _cagrad_dual(g: np.ndarray, c: float, start: tuple[list[int], np.ndarray] | None) -> tuple[np.ndarray, float]:
    """The simplex weights w minimising g_w . g0 + c ||g0|| ||g_w|| (CAGrad's dual problem,
    ``g`` the float64 Gram matrix scaled to trace 1) and t = ||g_w|| / (c ||g0||); t = 0 when
    ||g_w|| is below the Pareto-front threshold.

    For mu = 1 / t > 0 the dual's optimality conditions are those of
    min_w g_w . g0 + (mu / 2) ||g_w||^2 = (mu / 2) ||g_w + t g0||^2 - const, i.e. MGDA's
    min-norm problem on the points g_i + t g0 (the projection of -t g0 onto the hull of the
    g_i), with the extra equation ||g_w|| = c ||g0|| t. Along t the active set changes finitely
    often and on each piece the equation is a quadratic, so: solve it
    on the current active set and certify the result (weights >= 0, the min-norm optimality of
    every task at that t: :func:`~mtbench.combiners.solvers.cagrad_dual_compiled.cagrad_candidate`). A failed certificate first gives the next active set to try at once
    (the negative weights dropped, the violated tasks added; up to ``_BLOCK_PIVOTS`` times),
    then Wolfe's algorithm at that t (warm) gives it, keeping a bracket [lo, hi] of the root
    (bisection when a piece's root falls outside it). Only a certified solution is returned
    before ``_CAGRAD_MAX_ITER`` iterations."""
    n_tasks = g.shape[0]
    a = g.mean(axis=1)  # a_i = g_i . g0
    n0 = float(a.mean())  # ||g0||^2
    s = c * math.sqrt(max(n0, 0.0))
    # every ||g_i|| <= 1, so the root t* = ||g_w*|| / s lies in (0, 1 / s]; below t_front,
    # ||g_w*|| is below the Pareto-front threshold
    lo, hi, t_front = 0.0, 1.0 / s, _CAGRAD_FRONT / s
    if start is None:  # far along the path, the projection of -t g0 is the vertex of least g_i . g0
        support, w_s = [int(np.argmin(a))], np.ones(1)
    else:
        support, w_s = start
    t = hi
    pivots = _BLOCK_PIVOTS
    from mtbench.combiners.solvers.cagrad_dual_compiled import cagrad_candidate

    for iteration in range(_CAGRAD_MAX_ITER):
        code, t_c, w_c, negative, violated = cagrad_candidate(
            g, a, s, n0, np.asarray(support, dtype=np.int64), lo, hi, _DEFAULT_MGDA_TOL, _GAP_FLOOR
        )
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

"""Wolfe's min-norm algorithm, compiled (:func:`wolfe_min_norm`), at every number of tasks;
:mod:`mtbench.combiners.solvers.min_norm` calls it."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _compiled, _numpy_sum, solve_or_lstsq


@_compiled
def _affine_minimizer(g: np.ndarray, support: np.ndarray, m: int) -> tuple[np.ndarray, bool]:
    """The barycentric weights of the min-norm point of the affine hull of ``support[:m]`` (the
    KKT system [[G_SS, 1], [1^T, 0]] [a; mu] = [0; 1], :func:`solve_or_lstsq`), and False
    where even the least-squares solution is not finite."""
    kkt = np.zeros((m + 1, m + 1))
    for i in range(m):
        for j in range(m):
            kkt[i, j] = g[support[i], support[j]]
        kkt[i, m] = 1.0
        kkt[m, i] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    x = solve_or_lstsq(kkt, rhs)
    for i in range(m + 1):
        if not np.isfinite(x[i]):
            return np.zeros(m), False
    alpha = x[:m].copy()
    total = _numpy_sum(alpha)
    if np.isfinite(total) and total != 0.0:
        alpha = alpha / total
    return alpha, True


@_compiled
def _products(g: np.ndarray, support: np.ndarray, m: int, w: np.ndarray) -> np.ndarray:
    """(G w)_i = sum_k G[i, support[k]] w[k] for every i, BLAS's gemv on the gathered columns."""
    n = g.shape[0]
    cols = np.empty((n, m))
    for i in range(n):
        for k in range(m):
            cols[i, k] = g[i, support[k]]
    return np.dot(cols, w)


@_compiled
def _minor_cycles(
    g: np.ndarray, sup: np.ndarray, m: int, w_s: np.ndarray, iterations: int, max_iter: int
) -> tuple[int, np.ndarray, int]:
    """Wolfe's minor cycles on ``sup[:m]`` (in place) from the weights ``w_s``: towards the affine
    minimiser of the support, dropping points that leave the hull. Returns the new support's
    size, its weights and the iteration count (``max_iter`` where an affine solve has no
    finite solution: the search ends there)."""
    while True:
        iterations += 1
        alpha, finite = _affine_minimizer(g, sup, m)
        if not finite:
            return m, w_s, max_iter
        positive = True
        for k in range(m):
            if not alpha[k] > 0.0:
                positive = False
        if positive:
            return m, alpha, iterations
        drop = 0
        least = np.inf
        for k in range(m):  # the first blocking point to reach the hull's boundary
            if alpha[k] <= 0.0:
                step = w_s[k] - alpha[k]
                ratio = w_s[k] / step if step > 0.0 else 0.0
            else:
                ratio = np.inf
            if ratio < least:
                least = ratio
                drop = k
        theta = min(1.0, max(0.0, least))
        kept = 0
        moved = np.empty(m)
        for k in range(m):
            value = w_s[k] + theta * (alpha[k] - w_s[k])
            if value > 0.0 and k != drop:
                sup[kept] = sup[k]
                moved[kept] = value
                kept += 1
        m = kept
        w_s = moved[:m] / _numpy_sum(moved[:m])
        if iterations >= max_iter or m == 0:
            return m, w_s, iterations


@_compiled
def wolfe_min_norm(
    g: np.ndarray, tol: float, gap_floor: float, max_iter: int, warm: bool, support: np.ndarray, w_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Wolfe's algorithm (P. Wolfe, "Finding the nearest point in a polytope", Math.
    Programming 11, 1976), written with the Gram matrix only: the support and simplex weights of
    the minimiser of ``w^T g w`` over the simplex (``g`` [T, T] symmetric float64, scaled so
    that its largest diagonal entry is about 1: ``gap_floor`` is absolute). Stops when the
    duality gap ``w^T g w - min_i (g w)_i`` is within ``max(tol * obj, gap_floor)``, when the
    objective stops falling (working precision), or after ``max_iter`` affine solves; returns
    the best point seen and the number of affine solves. With ``warm``, minor cycles from the active set ``support`` and its
    simplex weights ``w_start`` first; else from ``support``'s one vertex."""
    n = g.shape[0]
    iterations = 0
    sup = np.empty(n + 1, dtype=np.int64)
    m = support.shape[0]
    sup[:m] = support
    w_s = w_start.copy()
    if warm:
        m, w_s, iterations = _minor_cycles(g, sup, m, w_s, iterations, max_iter)
        if m == 0:  # (every point dropped: cannot happen in exact arithmetic) start cold
            sup[0] = np.argmin(np.diag(g).copy())
            m = 1
            w_s = np.ones(1)
    best_obj = np.inf
    best_sup = sup[:m].copy()
    best_w = w_s.copy()
    prev_obj = np.inf
    while True:
        g_w = _products(g, sup, m, w_s)  # (G w)_i = x . g_i for the current point x
        on_support = np.empty(m)
        for k in range(m):
            on_support[k] = g_w[sup[k]]
        obj = np.dot(w_s, on_support)  # ||x||^2
        if obj < best_obj:
            best_obj = obj
            best_sup = sup[:m].copy()
            best_w = w_s.copy()
        if not obj < prev_obj:  # no progress left at working precision
            break
        prev_obj = obj
        j = np.argmin(g_w)
        gap = obj - g_w[j]
        inside = False
        for k in range(m):
            if sup[k] == j:
                inside = True
        if gap <= max(tol * obj, gap_floor) or inside or iterations >= max_iter:
            break
        sup[m] = j
        extended = np.zeros(m + 1)
        extended[:m] = w_s
        m, w_s, iterations = _minor_cycles(g, sup, m + 1, extended, iterations, max_iter)
        if m == 0:
            break
    return best_sup, best_w, iterations

"""One candidate of CAGrad's dual solve, compiled (:func:`cagrad_candidate`), at every number of
tasks; :mod:`mtbench.combiners.solvers.cagrad_dual` calls it."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _compiled, solve_or_lstsq


@_compiled
def cagrad_candidate(
    g: np.ndarray,
    a: np.ndarray,
    s: float,
    n0: float,
    support: np.ndarray,
    lo: float,
    hi: float,
    tol: float,
    gap_floor: float,
) -> tuple[int, float, np.ndarray, np.ndarray, np.ndarray]:
    """One candidate of CAGrad's dual solve (:func:`~mtbench.combiners.solvers.cagrad_dual._cagrad_dual`
    documents the path): the root t of the piece on which ``support`` is the active set, and
    whether its weights are certified.

    On that piece w(t) = w0 + t w1 is affine (the KKT system of min ||g_w + t g0||^2 over the
    affine hull of ``support``, right-hand sides [0; 1] and [-a_S; 0], by
    :func:`solve_or_lstsq`), so ||g_w(t)||^2 - s^2 t^2 = A + 2 B t + (C - s^2) t^2 is a
    quadratic: its root where it turns negative (the dual's h(t) = ||g_w(t)|| / t - s is
    non-increasing in t). The certificate: weights >= 0 and (G_t w)_j >= w^T G_t w for every
    task j, G_t the Gram matrix of the points g_i + t g0, to ``max(tol * obj, gap_floor *
    max_j (G_t)_jj)``. Returns ``(code, t, w_c, negative, violated)``: code 0, the piece has
    no root in [lo, hi] (or its system no finite solution); 1, certified (``w_c`` the weights
    on ``support``); 2, not certified (``negative`` [m] and ``violated`` [T] give the next
    active set)."""
    n = g.shape[0]
    m = support.shape[0]
    empty_m = np.zeros(m, dtype=np.bool_)
    empty_n = np.zeros(n, dtype=np.bool_)
    kkt = np.zeros((m + 1, m + 1))
    rhs = np.zeros((m + 1, 2))
    for i in range(m):
        for j in range(m):
            kkt[i, j] = g[support[i], support[j]]
        kkt[i, m] = -1.0
        kkt[m, i] = 1.0
        rhs[i, 1] = -a[support[i]]
    rhs[m, 0] = 1.0
    sol = solve_or_lstsq(kkt, rhs)
    for i in range(m + 1):
        if not (np.isfinite(sol[i, 0]) and np.isfinite(sol[i, 1])):
            return 0, 0.0, np.zeros(m), empty_m, empty_n
    quad_a = 0.0
    quad_b = 0.0
    quad_c = 0.0
    for i in range(m):  # w0 . G_S w0, w0 . G_S w1, w1 . G_S w1
        g0 = 0.0
        g1 = 0.0
        for j in range(m):
            g0 += kkt[i, j] * sol[j, 0]
            g1 += kkt[i, j] * sol[j, 1]
        quad_a += sol[i, 0] * g0
        quad_b += sol[i, 0] * g1
        quad_c += sol[i, 1] * g1
    quad_c -= s * s
    disc = quad_b * quad_b - quad_a * quad_c
    if disc < 0.0:
        return 0, 0.0, np.zeros(m), empty_m, empty_n
    q = -(quad_b + np.copysign(np.sqrt(disc), quad_b))
    t = np.inf
    for r in ((q / quad_c) if quad_c != 0.0 else np.inf, (quad_a / q) if q != 0.0 else np.inf):
        if np.isfinite(r) and r > 0.0 and quad_b + quad_c * r <= 0.0 and r < t:
            t = r
    if not (np.isfinite(t) and lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12)):
        return 0, 0.0, np.zeros(m), empty_m, empty_n
    w_t = np.empty(m)
    biggest = 0.0
    for i in range(m):
        w_t[i] = sol[i, 0] + t * sol[i, 1]
        biggest = max(biggest, abs(w_t[i]))
    negative = np.empty(m, dtype=np.bool_)
    w_c = np.empty(m)
    total = 0.0
    any_negative = False
    for i in range(m):
        negative[i] = w_t[i] < -1e-12 * biggest
        any_negative = any_negative or negative[i]
        w_c[i] = max(w_t[i], 0.0)
        total += w_c[i]
    w_c /= total
    # the min-norm optimality at t of every task: (G_t w)_j >= w^T G_t w
    aw = 0.0
    for i in range(m):
        aw += a[support[i]] * w_c[i]
    gw = np.empty(n)
    top = -np.inf
    for j in range(n):
        v = 0.0
        for i in range(m):
            v += g[j, support[i]] * w_c[i]
        gw[j] = v
        top = max(top, g[j, j] + 2 * t * a[j] + t * t * n0)
    obj = 2 * t * aw + t * t * n0
    for i in range(m):
        obj += w_c[i] * gw[support[i]]
    bound = obj - max(tol * obj, gap_floor * top)
    violated = np.empty(n, dtype=np.bool_)
    any_violated = False
    for j in range(n):
        violated[j] = gw[j] + t * a[j] + t * (aw + t * n0) < bound
        any_violated = any_violated or violated[j]
    if not any_negative and not any_violated:
        return 1, t, w_c, negative, violated
    return 2, t, w_c, negative, violated

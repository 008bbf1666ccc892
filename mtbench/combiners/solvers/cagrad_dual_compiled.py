"""One candidate of CAGrad's dual solve below ``COMPILED_BELOW`` tasks, compiled
(:func:`cagrad_candidate`); :mod:`mtbench.combiners.solvers.cagrad_dual` calls it."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _compiled


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
    """One candidate of CAGrad's dual solve (the same steps as
    :func:`mtbench.combiners.functional._cagrad_piece` and the certificate in
    :func:`~mtbench.combiners.functional._cagrad_dual`, which document them): the root t of the
    piece on which ``support`` is the active set, and whether its weights are certified.
    Returns ``(code, t, w_c, negative, violated)``: code 0, the piece has no root in
    [lo, hi]; 1, certified (``w_c`` the weights on ``support``); 2, not certified (``negative``
    [m] and ``violated`` [T] give the next active set); 3, the piece's system is singular or
    its solution not finite (the caller takes the NumPy path, whose least squares handle it)."""
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
    try:
        sol = np.linalg.solve(kkt, rhs)
    except Exception:  # singular
        return 3, 0.0, np.zeros(m), empty_m, empty_n
    for i in range(m + 1):
        if not (np.isfinite(sol[i, 0]) and np.isfinite(sol[i, 1])):
            return 3, 0.0, np.zeros(m), empty_m, empty_n
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

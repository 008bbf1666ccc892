"""The dual-cone QPs below ``COMPILED_BELOW`` tasks, compiled: each QP's block principal pivoting
on its own (:func:`dual_cone_pivots`), and UPGrad's or DualProj's weights in one call
(:func:`dual_cone_weights`); :mod:`mtbench.combiners.solvers.dual_cone` calls them."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers import _PIVOT_REL_TOL, _PIVOT_RETRIES
from mtbench.combiners.solvers._compiled import _cholesky_solve, _compiled, _numpy_sum


@_compiled
def dual_cone_pivots(
    a: np.ndarray,
    u: np.ndarray,
    start: np.ndarray,
    tol: float,
    max_sweeps: int,
    retries: int,
    v: np.ndarray,
    free: np.ndarray,
    settled: np.ndarray,
) -> bool:
    """Block principal pivoting (Judice & Pires 1994, Kim & Park's 2011 safeguard) on each row r
    of ``u`` [R, T]: v = argmin 1/2 v^T A v subject to v >= u[r], as the linear complementarity
    problem x = v - u[r] >= 0, y = A x + A u[r] >= 0, x . y = 0 (A [T, T] positive definite),
    from the free set ``start[r]`` (the guess of the positive x's). Each sweep solves
    A_FF x_F = -(A u[r])_F by Cholesky and sets y outside F; the entries where x < -tol in F
    or y < -tol outside F move across, all at once while their number falls (``retries`` more
    tries otherwise), else only the last one; at most ``max_sweeps`` sweeps. Writes ``v`` [R, T], the
    final free sets ``free`` [R, T] and ``settled`` [R] (whether the row's last sweep moved
    nothing: a row that did not settle has no solution in ``v``); returns False, with the
    outputs incomplete, if a factorisation failed (A not numerically positive definite)."""
    rows, n = u.shape
    q = np.empty(n)
    x = np.empty(n)
    z = np.empty(n)
    f = np.empty(n, dtype=np.bool_)
    bad = np.empty(n, dtype=np.bool_)
    idx = np.empty(n, dtype=np.int64)
    sub = np.empty((n, n))
    rhs = np.empty(n)
    chol = np.empty((n, n))
    for r in range(rows):
        nz = 0
        for j in range(n):  # u[r]'s non-zero entries (UPGrad's rows have one)
            if u[r, j] != 0.0:
                idx[nz] = j
                nz += 1
        for k in range(n):  # q = A u[r] (the zero terms of the sum left out: the same sum)
            s = 0.0
            for i in range(nz):
                s += a[k, idx[i]] * u[r, idx[i]]
            q[k] = s
            f[k] = start[r, k]
            x[k] = 0.0
        best = n + 1
        tries = retries
        count = 1  # (no sweep yet: not settled)
        for _ in range(max_sweeps):
            w = 0
            for k in range(n):
                if f[k]:
                    idx[w] = k
                    w += 1
            for i in range(w):  # A_FF z = -q_F
                rhs[i] = -q[idx[i]]
                for j in range(i + 1):
                    sub[i, j] = a[idx[i], idx[j]]
            if not _cholesky_solve(sub[:w, :w], rhs[:w], chol, z):
                return False
            for k in range(n):
                x[k] = 0.0
            for i in range(w):
                x[idx[i]] = z[i]
            count = 0
            last = -1
            for k in range(n):  # y_k = (A x + q)_k, and the entries that violate their sign
                s = q[k]
                for i in range(w):
                    s += a[k, idx[i]] * z[i]
                bad[k] = x[k] < -tol if f[k] else s < -tol
                if bad[k]:
                    count += 1
                    last = k
            if count == 0:
                break
            if count < best:
                best = count
                tries = retries
            else:
                tries -= 1
            if tries >= 0:  # (also when the count fell: tries was just reset)
                for k in range(n):
                    if bad[k]:
                        f[k] = not f[k]
            else:
                f[last] = not f[last]
        settled[r] = count == 0
        for k in range(n):
            free[r, k] = f[k]
            v[r, k] = u[r, k] + (max(x[k], 0.0) if f[k] else 0.0)
    return True


@_compiled
def dual_cone_weights(
    g: np.ndarray,
    upgrad: bool,
    start: np.ndarray,
    reg: float,
    max_sweeps: int,
    weights: np.ndarray,
    free: np.ndarray,
    rel_tol: float = _PIVOT_REL_TOL,
    retries: int = _PIVOT_RETRIES,
) -> bool:
    """UPGrad's (``upgrad``) or DualProj's weights [T] from the symmetric float64 Gram matrix
    ``g`` in one call: the QPs of :func:`mtbench.combiners.functional.dual_cone_state` (the unit
    gradients' Gram matrix over its trace plus ``reg`` I, the preference rows) pivoted by
    :func:`dual_cone_pivots` from the free sets ``start`` [R, T], the same arithmetic as that
    function's NumPy code around the pivoting (sums in NumPy's order). Writes ``weights`` and
    the final free sets ``free``; False (outputs incomplete) where a gradient is zero, a
    factorisation failed or a row did not settle: the caller's general path handles those."""
    n = g.shape[0]
    norms = np.empty(n)
    inv = np.empty(n)
    for i in range(n):
        norms[i] = np.sqrt(max(g[i, i], 0.0))
        if not norms[i] > 0.0:
            return False
        inv[i] = 1.0 / norms[i]
    units = np.empty((n, n))
    diag = np.empty(n)
    for i in range(n):
        for j in range(n):
            units[i, j] = g[i, j] * inv[i] * inv[j]
        diag[i] = units[i, i]
    trace = _numpy_sum(diag)
    a = np.empty((n, n))
    top = -np.inf
    for i in range(n):
        for j in range(n):
            a[i, j] = units[i, j] / trace + (reg if i == j else 0.0)
        top = max(top, a[i, i])
    rows = n if upgrad else 1
    u = np.zeros((rows, n))
    biggest = 0.0
    for j in range(n):
        p = norms[j] / n
        if upgrad:
            u[j, j] = p
        else:
            u[0, j] = p
        biggest = max(biggest, abs(p))
    tol = rel_tol * (top * max(biggest, 1e-300))
    v = np.empty((rows, n))
    settled = np.empty(rows, dtype=np.bool_)
    for r in range(rows):
        for j in range(n):
            free[r, j] = start[r, j]
    if not dual_cone_pivots(a, u, start.copy(), tol, max_sweeps, retries, v, free, settled):
        return False
    for r in range(rows):
        if not settled[r]:
            return False
    for j in range(n):  # the rows' sum (NumPy's order along the first axis), then T and 1 / ||g_j||
        total = 0.0
        for r in range(rows):
            total += v[r, j]
        weights[j] = n * total * inv[j]
    return True

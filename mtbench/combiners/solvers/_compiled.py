"""What the compiled kernels share: numba's ``njit`` with its machine code cached on disk, and
the small routines several kernels call (a Cholesky factorisation and solve, an LU solve with
its least-squares fallback, NumPy's summation order). Imported only where a kernel runs: numba's import costs about a second."""

from __future__ import annotations

import numpy as np
from numba import njit


def _compiled(fn):
    """``njit`` with its machine code cached on disk (next to this file, else in the user's
    cache directory); where neither is writable, compiled once per process instead."""
    try:
        return njit(cache=True, error_model="numpy")(fn)
    except RuntimeError:  # numba found no writable cache location
        return njit(error_model="numpy")(fn)


@_compiled
def _cholesky(m: np.ndarray, chol: np.ndarray) -> bool:
    """The Cholesky factor of the symmetric [n, n] ``m`` (its lower triangle is read) into
    ``chol[:n, :n]``'s lower triangle; False if m is not numerically positive definite."""
    n = m.shape[0]
    for i in range(n):
        for j in range(i + 1):
            s = m[i, j]
            for k in range(j):
                s -= chol[i, k] * chol[j, k]
            if i == j:
                if not s > 0.0:
                    return False
                chol[i, i] = np.sqrt(s)
            else:
                chol[i, j] = s / chol[j, j]
    return True


@_compiled
def _cholesky_solve(m: np.ndarray, b: np.ndarray, chol: np.ndarray, out: np.ndarray) -> bool:
    """out[:n] = m^-1 b by the Cholesky factorisation of the symmetric [n, n] ``m`` (its lower
    triangle is read; the factor goes into ``chol[:n, :n]``); False if m is not numerically
    positive definite."""
    n = m.shape[0]
    if not _cholesky(m, chol):
        return False
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= chol[i, k] * out[k]
        out[i] = s / chol[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s -= chol[k, i] * out[k]
        out[i] = s / chol[i, i]
    return True


@_compiled
def _numpy_sum(a: np.ndarray) -> float:
    """``a.sum()`` of a contiguous float64 vector of at most 128 entries in NumPy's order: a
    plain loop below 8 entries, else eight running sums combined pairwise, then the rest."""
    n = a.shape[0]
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    stop = n - n % 8
    while i < stop:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@_compiled
def solve_or_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solution of the square float64 system a x = b by LAPACK's LU, or where a is
    numerically singular (or the solution not finite) its least-squares solution (LAPACK's
    SVD-based gelsd, NumPy's default cut-off for small singular values)."""
    try:
        x = np.linalg.solve(a, b)
        if np.all(np.isfinite(x)):
            return x
    except Exception:  # singular
        pass
    return np.linalg.lstsq(a, b, rcond=2.220446049250313e-16 * a.shape[0])[0]

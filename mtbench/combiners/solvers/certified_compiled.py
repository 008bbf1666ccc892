"""The certified Cholesky solve below ``COMPILED_BELOW`` tasks, compiled (:func:`certified_solve`);
:func:`mtbench.combiners.solvers.certified.well_conditioned_solve` calls it."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _cholesky, _compiled


@_compiled
def certified_solve(g: np.ndarray, rhs: np.ndarray, max_condition: float, out: np.ndarray) -> bool:
    """out = g^-1 rhs for the symmetric [n, n] ``g`` by its Cholesky factor L, when
    ||g||_F ||L^-1||_F^2 (a bound on its condition number) is at most ``max_condition``; False
    (``out`` untouched) when the factorisation fails or the bound is larger
    (:func:`mtbench.combiners.linalg.well_conditioned_solve` documents the certificate)."""
    n = g.shape[0]
    chol = np.zeros((n, n))
    if not _cholesky(g, chol):
        return False
    inv = np.zeros((n, n))  # L^-1, column by column
    for j in range(n):
        inv[j, j] = 1.0 / chol[j, j]
        for i in range(j + 1, n):
            s = 0.0
            for k in range(j, i):
                s -= chol[i, k] * inv[k, j]
            inv[i, j] = s / chol[i, i]
    fro = 0.0
    sq = 0.0
    for i in range(n):
        for j in range(n):
            fro += g[i, j] * g[i, j]
            sq += inv[i, j] * inv[i, j]
    if not np.sqrt(fro) * sq <= max_condition:
        return False
    y = np.zeros(n)
    for i in range(n):
        s = 0.0
        for k in range(i + 1):
            s += inv[i, k] * rhs[k]
        y[i] = s
    for i in range(n):
        s = 0.0
        for k in range(i, n):
            s += inv[k, i] * y[k]
        out[i] = s
    return True

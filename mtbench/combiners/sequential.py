"""PCGrad's and GradVac's visits, compiled by numba.

For every task each method visits the other tasks one after another; a visit reads the current
gradient's products with the originals and may update them, so the visits cannot be vectorised.
In coefficient space (:func:`mtbench.combiners.pcgrad.pcgrad` explains it) a visit is a few
scalar operations and at most one row update of length T; compiled, each task runs through its
visits with its row in cache (the tasks are independent), with the same floating-point
operations in the same order as a vectorised NumPy loop.

Each kernel works in place on float64 arrays: ``coeff`` [T, T] (row i: task i's current gradient
in the basis of the original gradients, starting at the identity) and ``cg`` [T, T] (row i: its
products with every original gradient, ``coeff @ G``, starting at G). Imported only where a
kernel runs: numba's import costs about a second.
"""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _compiled


@_compiled
def pcgrad_visits(g: np.ndarray, order: np.ndarray, coeff: np.ndarray, cg: np.ndarray) -> bool:
    """PCGrad's projections: task i visits ``order[i, s]`` for s = 0 .. T-2 and, when its current
    gradient conflicts with that task's original one (negative product, a non-zero gradient),
    removes the component along it. Returns whether any projection happened."""
    n = g.shape[0]
    projected = False
    for i in range(n):
        for s in range(n - 1):
            o = order[i, s]
            sq = g[o, o]
            d = cg[i, o]
            if d < 0.0 and sq > 0.0:
                projected = True
                step = d / sq
                coeff[i, o] -= step
                minus = -step
                for k in range(n):  # g_i' -= (g_i' . g_o / ||g_o||^2) g_o
                    cg[i, k] += minus * g[o, k]
    return projected


@_compiled
def gradvac_visits(
    g: np.ndarray, order: np.ndarray, phi: np.ndarray, beta: float, eps: float, coeff: np.ndarray, cg: np.ndarray
) -> None:
    """GradVac's updates (Wang et al. 2021, Algorithm 1): task i visits ``order[i, s]`` = j; when
    the cosine of its current gradient with g_j is below the EMA target phi[i, j], it adds the
    multiple of g_j that brings the cosine to the target; then phi[i, j] moves towards the
    cosine (``beta``). ``phi`` [T, T] is updated in place."""
    n = g.shape[0]
    for i in range(n):
        sq_i = g[i, i]  # ||g_i'||^2, kept up to date
        for s in range(n - 1):
            o = order[i, s]
            dot = cg[i, o]
            norm_i = np.sqrt(max(sq_i, 0.0))
            norm_j = np.sqrt(max(g[o, o], 0.0))
            cos = dot / (norm_i * norm_j + eps)
            target = phi[i, o]
            if cos < target:
                s_cos = np.sqrt(max(1.0 - cos * cos, 0.0))
                s_tgt = np.sqrt(max(1.0 - target * target, 0.0))
                w = norm_i * (target * s_cos - cos * s_tgt) / (norm_j * s_tgt + eps)
                # ||g_i' + w g_j||^2 = ||g_i'||^2 + 2 w (g_i' . g_j) + w^2 ||g_j||^2
                sq_i += 2.0 * w * dot + w * w * g[o, o]
                coeff[i, o] += w
                for k in range(n):
                    cg[i, k] += w * g[o, k]
            phi[i, o] = (1.0 - beta) * target + beta * cos

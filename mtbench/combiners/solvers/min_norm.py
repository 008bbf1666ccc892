"""The min-norm point of the convex hull of the task gradients on their Gram matrix (MGDA, and
CAGrad's dual): Wolfe's active-set algorithm, certified by the duality gap, compiled
(:mod:`.min_norm_compiled`) at every number of tasks (why one form: docs/performance.md,
"Compiled and batched forms of one solver")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_DEFAULT_MGDA_TOL = 1e-10
_DEFAULT_MGDA_MAX_ITER = 1000
#: duality gaps below this (relative to max_i ||g_i||^2) are rounding noise
_GAP_FLOOR = 1e-13


def _finish_weights(w64: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Clamp to >= 0 and renormalise to sum 1, in float64 and again in the output dtype."""
    w64 = w64.clamp_min(0.0)
    w64 = w64 / w64.sum()
    out = w64.to(dtype=dtype).clamp_min(0)
    out = out / out.sum()
    return out.to(device=device)


def _two_task_gamma(g11: float, g12: float, g22: float) -> float:
    """Sener & Koltun Algorithm 1 (closed form) from Gram entries: weight of task 1."""
    denom = g11 + g22 - 2.0 * g12  # ||g1 - g2||^2
    if not denom > 0:
        return 0.5
    return min(1.0, max(0.0, (g22 - g12) / denom))


def _warm_support(start: Tensor | None, n_tasks: int) -> tuple[list[int], np.ndarray] | None:
    """The support and simplex weights of a previous solve to start from, or None (cold start)
    when ``start`` is missing, of another size, not finite or not a non-negative vector."""
    if start is None or not isinstance(start, Tensor) or tuple(start.shape) != (n_tasks,):
        return None
    w = start.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not bool(np.isfinite(w).all()) or bool((w < 0).any()):
        return None
    support = np.flatnonzero(w > 0)
    total = float(w[support].sum())
    if support.size == 0 or not total > 0:
        return None
    return support.tolist(), w[support] / total


def _min_norm_weights(gram: Tensor, tol: float, max_iter: int, start: Tensor | None = None) -> Tensor:
    """Minimise ``w^T G w`` over the simplex; ``gram`` is a float64 CPU [T, T] matrix.

    ``start``: the weights of a previous solve (their positive entries' tasks are the first
    active set, their values the first point); None: a cold start from one vertex."""
    n_tasks = gram.shape[0]
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    g = 0.5 * (g + g.T)
    if not bool(np.isfinite(g).all()):
        raise ValueError("mgda: the gradients (or their Gram matrix) contain NaN or infinite values")
    scale = float(g.diagonal().max())
    if not scale > 0:  # every gradient is zero: every simplex point is optimal
        return torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64)
    if n_tasks == 1:
        return torch.ones(1, dtype=torch.float64)
    g = g / scale  # weights are scale invariant; now max_i G_ii = 1 and w^T G w <= 1
    if n_tasks == 2:
        gamma = _two_task_gamma(float(g[0, 0]), float(g[0, 1]), float(g[1, 1]))
        return torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64)

    support, w_s = _wolfe(g, tol, max_iter, _warm_support(start, n_tasks))
    weights = torch.zeros(n_tasks, dtype=torch.float64)
    weights[torch.tensor(support, dtype=torch.long)] = torch.from_numpy(np.asarray(w_s, dtype=np.float64))
    return weights


def _wolfe(
    g: np.ndarray, tol: float, max_iter: int, warm: tuple[list[int], np.ndarray] | None
) -> tuple[list[int], np.ndarray]:
    """Wolfe's algorithm (:func:`mtbench.combiners.solvers.min_norm_compiled.wolfe_min_norm`,
    which documents it) on the symmetric float64 ``g``: from ``warm`` (the first active set and
    its weights, :func:`_warm_support`) or, None, from the shortest point."""
    if warm is None:
        support, w_s = np.array([int(np.argmin(g.diagonal()))], dtype=np.int64), np.ones(1)
    else:
        support, w_s = np.asarray(warm[0], dtype=np.int64), np.asarray(warm[1], dtype=np.float64)
    from mtbench.combiners.solvers.min_norm_compiled import wolfe_min_norm

    found, w, _ = wolfe_min_norm(np.ascontiguousarray(g), tol, _GAP_FLOOR, max_iter, warm is not None, support, w_s)
    return found.tolist(), w

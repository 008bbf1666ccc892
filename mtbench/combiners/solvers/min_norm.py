"""The min-norm point of the convex hull of the task gradients on their Gram matrix (MGDA, and
CAGrad's dual): Wolfe's active-set algorithm, certified by the duality gap; compiled below
``COMPILED_BELOW`` tasks, NumPy above, with block pivots on large supports.

Both forms timed on both sides of the switch: docs/performance.md, "Compiled and batched forms
of one solver" (``python scripts/bench_solvers.py --forms``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.solvers import COMPILED_BELOW

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


#: solves and products at least this large run in torch: NumPy's OpenBLAS threads, started
#: beside torch's inside a training step, contend with them for the cores (below it NumPy's
#: per-call overhead is far below torch's)
_TORCH_SOLVE_SIZE = 64
#: block pivots (the active set guessed from a failed certificate) before Wolfe's algorithm
_BLOCK_PIVOTS = 5
#: below this many tasks the dual-cone pivoting (each QP on its own) and the Newton iteration of
#: Nash-MTL and FairGrad run compiled (``*_compiled.py``); from it on, batched in
#: NumPy and torch (the compiled loops' scalar factorisations would cost more than LAPACK's)
_COMPILED_BELOW = COMPILED_BELOW
#: MGDA tries block pivots from this many tasks on (below it Wolfe's cycles solve small
#: systems cheaply, and the solve is the one the shapes40 references were made with)
_PIVOT_MIN_TASKS = 64


def _matvec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """m @ v (a vector or a matrix v), by torch for large operands (see ``_TORCH_SOLVE_SIZE``)."""
    if v.shape[0] >= _TORCH_SOLVE_SIZE:
        return (torch.from_numpy(np.ascontiguousarray(m)) @ torch.from_numpy(np.ascontiguousarray(v))).numpy()
    return m @ v


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solution of the square float64 system a x = b: LU (torch's LAPACK for large
    systems, see ``_TORCH_SOLVE_SIZE``), falling back to SVD-based least squares (LAPACK
    gelsd) when the system is numerically singular."""
    try:
        if a.shape[0] >= _TORCH_SOLVE_SIZE:
            x = torch.linalg.solve(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        else:
            x = np.linalg.solve(a, b)
        if bool(np.isfinite(x).all()):
            return x
    except (np.linalg.LinAlgError, RuntimeError):
        pass
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _affine_minimizer_np(gram: np.ndarray, support: list[int]) -> np.ndarray:
    """Barycentric weights of the min-norm point of the affine hull of ``support``.

    Solves the KKT system ``[[G_SS, 1], [1^T, 0]] [a; mu] = [0; 1]`` (:func:`_solve`).
    """
    m = len(support)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = gram[np.ix_(support, support)]
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    alpha = _solve(kkt, rhs)[:m]
    total = alpha.sum()
    if np.isfinite(total) and total != 0:
        alpha = alpha / total
    return alpha


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
    active set, their values the first point); None: a cold start from one vertex.
    (Runs in NumPy: Wolfe's iterations are many operations on tiny arrays.)"""
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

    warm = _warm_support(start, n_tasks)
    found = _min_norm_pivots(g, warm[0], tol) if warm is not None and n_tasks >= _PIVOT_MIN_TASKS else None
    support, w_s = found if found is not None else _wolfe(g, tol, max_iter, warm)
    weights = torch.zeros(n_tasks, dtype=torch.float64)
    weights[torch.tensor(support, dtype=torch.long)] = torch.from_numpy(np.asarray(w_s, dtype=np.float64))
    return weights


def _min_norm_pivots(g: np.ndarray, support: list[int], tol: float) -> tuple[list[int], np.ndarray] | None:
    """Block pivoting for the min-norm problem from a guessed active set (a previous solve's
    support): the affine minimiser of the support, certified by Wolfe's own stopping rule
    (weights > 0 and a duality gap within ``max(tol * obj, _GAP_FLOOR)``); a failed certificate
    gives the next guess at once (the non-positive weights dropped, the violated tasks added;
    up to ``_BLOCK_PIVOTS`` times). Returns the certified support and weights, or None (then
    Wolfe's algorithm runs). One solve per guess, where Wolfe's minor and major cycles take one
    per task that enters or leaves: the pivots pay off on large supports."""
    for _ in range(_BLOCK_PIVOTS + 1):
        alpha = _affine_minimizer_np(g, support)
        if not bool(np.isfinite(alpha).all()):
            return None
        negative = alpha <= 0
        w_c = np.clip(alpha, 0.0, None)
        total = float(w_c.sum())
        if not total > 0:
            return None
        w_c = w_c / total
        g_w = _matvec(g[:, support], w_c)
        obj = float(w_c @ g_w[support])
        violated = g_w < obj - max(tol * obj, _GAP_FLOOR)
        if not bool(negative.any()) and not bool(violated.any()):
            return support, w_c
        kept, added = _next_active_set(support, negative, violated)
        support = kept + added
        if not support:
            return None
    return None


def _next_active_set(support: list[int], negative: np.ndarray, violated: np.ndarray) -> tuple[list[int], list[int]]:
    """A block pivot's next guess after a failed certificate: the support's tasks whose weight
    is not ``negative`` (kept, in order), and the ``violated`` tasks [T] not among them (added)."""
    kept = [i for i, neg in zip(support, negative.tolist()) if not neg]
    seen = set(kept)
    return kept, [int(j) for j in np.flatnonzero(violated) if int(j) not in seen]


def _wolfe(
    g: np.ndarray, tol: float, max_iter: int, warm: tuple[list[int], np.ndarray] | None
) -> tuple[list[int], np.ndarray]:
    """Wolfe's algorithm (:func:`_wolfe_np`): below ``_COMPILED_BELOW`` tasks the compiled loop
    (:func:`mtbench.combiners.solvers.min_norm_compiled.wolfe_min_norm`, bit for bit the same iterations; the NumPy
    loop where an affine solve needs its least-squares fallback), else the NumPy loop."""
    n_tasks = g.shape[0]
    if n_tasks < _COMPILED_BELOW:
        if warm is None:
            support, w_s = np.array([int(np.argmin(g.diagonal()))], dtype=np.int64), np.ones(1)
        else:
            support, w_s = np.asarray(warm[0], dtype=np.int64), np.asarray(warm[1], dtype=np.float64)
        from mtbench.combiners.solvers.min_norm_compiled import wolfe_min_norm

        found, w, ok = wolfe_min_norm(
            np.ascontiguousarray(g), tol, _GAP_FLOOR, max_iter, warm is not None, support, w_s
        )
        if ok:
            return found.tolist(), w
    return _wolfe_np(g, tol, max_iter, warm)


def _wolfe_np(
    g: np.ndarray, tol: float, max_iter: int, warm: tuple[list[int], np.ndarray] | None
) -> tuple[list[int], np.ndarray]:
    """Wolfe's algorithm (P. Wolfe, "Finding the nearest point in a polytope", Math.
    Programming 11, 1976), written with the Gram matrix only: the support and its simplex
    weights of the minimiser of ``w^T g w`` (``g`` a symmetric float64 array scaled so that its
    largest diagonal entry is about 1; the gap floor is absolute). ``warm``: the first active
    set and its weights (:func:`_warm_support`); None: a cold start from the shortest point."""
    iterations = 0

    def minor_cycles(support: list[int], w_s: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Move towards the affine minimiser of ``support``, dropping points that leave the hull."""
        nonlocal iterations
        while True:
            iterations += 1
            alpha = _affine_minimizer_np(g, support)
            if not bool(np.isfinite(alpha).all()):
                iterations = max_iter
                return support, w_s
            if bool((alpha > 0).all()):
                return support, alpha
            blocking = alpha <= 0
            step = w_s - alpha
            ratios = np.where(blocking, w_s / np.where(step > 0, step, 1.0), math.inf)
            ratios = np.where(blocking & ~(step > 0), 0.0, ratios)
            drop = int(np.argmin(ratios))
            theta = min(1.0, max(0.0, float(ratios[drop])))
            w_s = w_s + theta * (alpha - w_s)
            keep = w_s > 0
            keep[drop] = False
            support = [s for s, kept in zip(support, keep.tolist()) if kept]
            w_s = w_s[keep]
            w_s = w_s / w_s.sum()
            if iterations >= max_iter or not support:
                return support, w_s

    if warm is None:
        support, w_s = [int(np.argmin(g.diagonal()))], np.ones(1)
    else:
        support, w_s = minor_cycles(*warm)
        if not support:  # (every point dropped: cannot happen in exact arithmetic) start cold
            support, w_s = [int(np.argmin(g.diagonal()))], np.ones(1)
    best_obj, best_support, best_w = math.inf, support, w_s
    prev_obj = math.inf
    while True:
        g_w = _matvec(g[:, support], w_s)  # (G w)_i = x . g_i for the current point x
        obj = float(w_s @ g_w[support])  # ||x||^2
        if obj < best_obj:
            best_obj, best_support, best_w = obj, list(support), w_s.copy()
        if not obj < prev_obj:  # no progress left at working precision
            break
        prev_obj = obj
        j = int(np.argmin(g_w))
        gap = obj - float(g_w[j])  # duality (Frank-Wolfe) gap w^T G w - min_i (G w)_i
        if gap <= max(tol * obj, _GAP_FLOOR) or j in support or iterations >= max_iter:
            break
        support, w_s = minor_cycles(support + [j], np.concatenate([w_s, np.zeros(1)]))
        if not support:
            break
    return best_support, best_w

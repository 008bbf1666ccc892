"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.combiners.linalg import BLOCK_COLUMNS, gram64
from mtbench.combiners.rows import _check_grads
from mtbench.combiners.solvers.min_norm import (
    _DEFAULT_MGDA_MAX_ITER,
    _DEFAULT_MGDA_TOL,
    _finish_weights,
    _min_norm_weights,
)
from mtbench.options import Option, boolean


def mgda_weights_from_gram(
    gram: Tensor,
    *,
    tol: float = _DEFAULT_MGDA_TOL,
    max_iter: int = _DEFAULT_MGDA_MAX_ITER,
    start: Tensor | None = None,
) -> Tensor:
    """MGDA task weights from the Gram matrix ``gram[i, j] = g_i . g_j`` (Sener & Koltun 2018).

    Solves the min-norm problem of Sener & Koltun (Sec. 3)::

        w = argmin_{w >= 0, sum w = 1}  || sum_i w_i g_i ||^2  =  w^T G w

    in float64, on the CPU:

    * ``T = 1``: ``[1]``.
    * ``T = 2``: the exact closed form (their Algorithm 1),
      ``w = (gamma, 1 - gamma)``, ``gamma = clamp(g2.(g2 - g1) / ||g1 - g2||^2, 0, 1)``,
      and ``(1/2, 1/2)`` when ``g1 == g2``.
    * ``T > 2``: Wolfe's min-norm-point algorithm (Wolfe 1976), an active-set method
      that is exact up to rounding: it keeps a set of affinely independent gradients,
      computes the min-norm point of their affine hull from a small KKT system, and
      adds the gradient with the smallest ``(G w)_i`` or drops points that leave the
      hull, so that ``||x||`` decreases strictly.

    Stopping rule (T > 2): ``G`` is first divided by its largest diagonal entry (the
    weights do not change; now ``max_i ||g_i||^2 = 1`` and ``w^T G w <= 1``). The solver
    stops when the duality gap ``gap = w^T G w - min_i (G w)_i`` satisfies
    ``gap <= max(tol * w^T G w, 1e-13)``. Since ``f(w) - f* <= 2 * gap`` for
    ``f(w) = w^T G w``, this makes the objective accurate to ``2 * tol`` relative
    (``tol`` defaults to 1e-10), except that gaps below 1e-13 * max_i ||g_i||^2 --
    the rounding level of the Gram entries -- always count as converged. This is
    stricter than ``gap <= tol * max(1, w^T G w)``. The solver also stops when the
    objective no longer decreases at float64 precision, or after ``max_iter``
    affine-minimiser solves (default 1000; in practice about ``T``), and then returns
    the best point found -- always a valid simplex point.

    Degenerate inputs: all-zero gradients give uniform weights; duplicated or
    linearly dependent gradients (rank-deficient ``G``) are handled (a duplicate of a
    point already in the active set can never be added). NaN/inf entries raise
    ``ValueError``.

    Warm start: ``start`` (the [T] weights of a previous solve, e.g. the last training
    step's) makes the tasks with positive weight the first active set and those weights the
    first point; the iterations and the stopping rule are the same, so the result is the
    same minimiser (to the tolerance), found in a few affine solves when the active set
    changes little from step to step, instead of about T from one vertex. A
    ``start`` of another size, with negative or non-finite entries, is ignored (a cold start).

    Returns:
        ``[T]`` weights, exactly ``>= 0`` and renormalised to sum to 1, in ``gram``'s
        dtype (floating) and on its device.
    """
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"mgda_weights_from_gram: gram must be a square [T, T] tensor; got {shape}")
    if gram.shape[0] == 0:
        raise ValueError("mgda_weights_from_gram: need at least one task")
    dtype = gram.dtype if gram.is_floating_point() else torch.get_default_dtype()
    w64 = _min_norm_weights(gram.detach().to(device="cpu", dtype=torch.float64), tol, max_iter, start)
    return _finish_weights(w64, dtype, gram.device)


def mgda_weights(grads: Tensor, *, tol: float = _DEFAULT_MGDA_TOL, max_iter: int = _DEFAULT_MGDA_MAX_ITER) -> Tensor:
    """MGDA task weights: the min-norm point of the convex hull of the task gradients.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018),
    Sec. 3: ``w = argmin_{w in simplex} || sum_i w_i g_i ||^2``; ``sum_i w_i g_i`` is then
    a common descent direction (or zero at a Pareto-stationary point).

    Args:
        grads: ``[T, D]`` per-task gradients (``[T, *S]`` is flattened).
        tol, max_iter: see :func:`mgda_weights_from_gram`, which documents the solver
            and its stopping rule.

    For ``T = 2`` the closed form is evaluated from the difference ``g1 - g2``
    accumulated in float64 (more accurate than the Gram entries when ``g1 ~ g2``);
    for ``T > 2`` the Gram matrix is accumulated in float64 and passed to the solver.

    Returns:
        ``[T]`` weights, exactly ``>= 0`` and summing to 1, dtype/device of ``grads``.
    """
    _check_grads(grads, "mgda_weights")
    n_tasks = grads.shape[0]
    if n_tasks == 0:
        return torch.zeros(0, dtype=grads.dtype, device=grads.device)
    flat = grads.detach().reshape(n_tasks, -1)
    if n_tasks == 1:
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    if n_tasks == 2:
        # a = g1 - g2, b = g2:  gamma = -(a . b) / (a . a)
        aa = torch.zeros((), dtype=torch.float64, device=flat.device)
        ab = torch.zeros((), dtype=torch.float64, device=flat.device)
        for start in range(0, flat.shape[1], BLOCK_COLUMNS):
            piece = flat[:, start : start + BLOCK_COLUMNS].to(torch.float64)
            a = piece[0] - piece[1]
            aa += a @ a
            ab += a @ piece[1]
        aa_v, ab_v = aa.item(), ab.item()
        if not (math.isfinite(aa_v) and math.isfinite(ab_v)):
            raise ValueError("mgda: the gradients contain NaN or infinite values")
        gamma = 0.5 if not aa_v > 0 else min(1.0, max(0.0, -ab_v / aa_v))
        w64 = torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64)
        return _finish_weights(w64, grads.dtype, grads.device)
    gram = gram64(flat).cpu()
    return _finish_weights(_min_norm_weights(gram, tol, max_iter), grads.dtype, grads.device)


NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(WarmStarted):
    """MGDA (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization").

    Weights w on the simplex minimising || sum_i w_i g_i / n_i ||^2 (Sec. 3.1, eq. 3),
    n_i the normaliser of ``normalization`` as in the authors' code: none (1), l2
    (||g_i||), loss (L_i), loss+ (L_i ||g_i||). Solved exactly for two tasks and to a
    relative duality gap of 1e-10 for more (:func:`functional.mgda_weights_from_gram`).
    The weights then multiply the raw losses, as in the original code: the shared
    parameters get T * sum_i w_i dL_i/dtheta (``rescale: true``, the baseline's scale; the
    convex combination without the factor T is a T-times smaller step) and each head gets
    its own loss's gradient. ``level: representation`` (the default) is MGDA-UB (Sec. 3.3).

    Each solve is warm-started from the last step's weights (their tasks are Wolfe's first
    active set: a few affine solves instead of about T); those weights are the combiner's state, saved in checkpoints, so a
    resumed run takes the same iterations.
    """

    name = "mgda"
    style = ("#9467bd", "D")
    options = {
        **GramWeighted.level_default("representation"),
        "normalization": Option(
            "none", "the normaliser n_i of each gradient: none | l2 | loss | loss+", one_of(*NORMALIZATIONS)
        ),
        "rescale": Option(True, "multiply the shared gradient by T (the baseline's scale)", boolean()),
    }

    def weights_from_gram(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Simplex weights (float64) from the Gram matrix of the per-task gradients and the losses."""
        gram = gram.detach().to(device="cpu", dtype=torch.float64)
        if self.normalization != "none":  # (none: every n_i is 1, the division would change nothing)
            norms = gram.diagonal().clamp_min(0).sqrt()
            loss = losses.detach().to(device="cpu", dtype=torch.float64)
            n = {"l2": norms, "loss": loss, "loss+": loss * norms}[self.normalization]
            n = torch.where(n > 0, n, torch.ones_like(n))  # a zero gradient or loss stays as it is
            gram = gram / (n[:, None] * n[None, :])
        # as in the authors' code: the weights found for the normalised g_i / n_i multiply
        # the raw losses (they are not divided by n_i again)
        self.start = mgda_weights_from_gram(gram, start=self.start)
        return self.start

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        scale = self.num_tasks if self.rescale else 1.0
        return self.weights_from_gram(gram, step.losses).to(step.rep.dtype) * scale

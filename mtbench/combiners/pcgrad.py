"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.linalg import combine, gram64
from mtbench.combiners.rows import _check_grads

# ----------------------------------------------------------------------------------
# PCGrad
# ----------------------------------------------------------------------------------


def _visit_orders(n_tasks: int, generator: torch.Generator | None) -> np.ndarray:
    """[T, T-1] int array: row i is task i's visiting order of the other tasks, from T calls
    ``torch.randperm(T - 1, generator=generator)`` in task order (T >= 2), each permutation
    indexing task i's other tasks listed in increasing order (0..i-1, i+1..T-1). PCGrad's and
    GradVac's draws."""
    device = generator.device if generator is not None else torch.device("cpu")
    perms = torch.stack([torch.randperm(n_tasks - 1, generator=generator, device=device) for _ in range(n_tasks)])
    perms = perms.cpu().numpy()
    return perms + (perms >= np.arange(n_tasks)[:, None])  # perm value p -> task p + (p >= i)


def _pcgrad_coefficients(gram: Tensor, generator: torch.Generator | None) -> tuple[Tensor, bool]:
    """Run PCGrad's projections in coefficient space.

    Row ``i`` of the returned [T, T] float64 matrix holds the coefficients of task
    ``i``'s projected gradient in the basis of the original gradients. Also returns
    whether any projection happened. (The permutations come from torch's ``randperm``;
    the visits run compiled, :func:`mtbench.combiners.sequential.pcgrad_visits`.)
    """
    from mtbench.combiners.sequential import pcgrad_visits

    n_tasks = gram.shape[0]
    if n_tasks < 2:
        return torch.eye(n_tasks, dtype=torch.float64), False
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    g = 0.5 * (g + g.T)
    order = _visit_orders(n_tasks, generator)  # [T, T-1]
    coeff = np.eye(n_tasks)
    cg = g.copy()  # row i: g_i' . g_k for every k (coeff @ G, kept up to date)
    projected = pcgrad_visits(g, order, coeff, cg)  # compiled (numba): the visits are sequential
    return torch.from_numpy(coeff), bool(projected)


def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad, "gradient surgery" (Yu et al., NeurIPS 2020, Algorithm 1).

    Args:
        grads: ``[T, D]`` per-task gradients (any ``[T, *S]`` is accepted and treated
            as ``[T, prod(S)]``; the result then has shape ``S``).
        generator: source of the visiting orders (``None``: torch's global generator).

    Returns:
        ``sum_i g_i'`` -- the SUM (not the mean) over tasks of the projected gradients,
        shape ``grads.shape[1:]``, dtype/device of ``grads``. With no conflicting pair
        this is exactly ``grads.sum(0)``.

    Algorithm: for each task ``i``, start from ``g = g_i``; visit the other tasks ``j``
    in a fresh random order and, whenever ``g . g_j < 0``, replace
    ``g <- g - (g . g_j) / ||g_j||^2 * g_j``. ``g_j`` is always task ``j``'s ORIGINAL
    gradient; tasks with ``||g_j|| = 0`` are skipped.

    Implementation: every projected gradient stays in the span of the originals,
    ``g = sum_k c_k g_k``, so ``g . g_j = c . Gram[:, j]`` and a projection only changes
    ``c_j``. The projections are therefore run on the ``T x T`` Gram matrix (accumulated
    in float64) with float64 coefficients, and the output is one matmul
    ``(sum_i c_i) @ grads``. This is the same sequence of operations as the direct
    algorithm, only expressed in coefficients: it costs one ``O(T^2 D)`` Gram product
    plus at most ``O(T^3)`` work instead of ``O(T^2 D)`` vector updates (each task's products
    with all the originals, ``c_i G``, are kept up to date, so a visit without a conflict costs
    O(1) and one with a conflict O(T)). The visits run as a compiled loop
    (:func:`mtbench.combiners.sequential.pcgrad_visits`, numba), one task after another, which is
    legal because the tasks' projections are independent.

    Generator use: for ``T >= 2``, exactly ``T`` calls
    ``torch.randperm(T - 1, generator=generator)`` in task order ``i = 0, ..., T-1``;
    the permutation drawn for task ``i`` indexes its other tasks listed in increasing
    order ``(0, ..., i-1, i+1, ..., T-1)``. For ``T < 2`` the generator is not used.
    """
    _check_grads(grads, "pcgrad")
    n_tasks = grads.shape[0]
    if n_tasks < 2:
        return grads.sum(dim=0)
    flat = grads.reshape(n_tasks, -1)
    gram = gram64(flat.detach()).cpu()
    coeff, projected = _pcgrad_coefficients(gram, generator)
    if not projected:
        return grads.sum(dim=0)
    weights = coeff.sum(dim=0)  # [T]: coefficient of each original gradient in sum_i g_i'
    return combine(weights, flat).reshape(grads.shape[1:])


def pcgrad_weights_from_gram(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad from the Gram matrix: ``[T]`` float64 weights ``c`` with ``sum_i g_i' = sum_k c_k g_k``.

    ``gram[i, j] = g_i . g_j`` (any floating dtype and device; used in float64 on the CPU).
    Runs exactly the projections of :func:`pcgrad` (same generator use: ``T`` calls of
    ``torch.randperm(T - 1, generator=generator)`` for ``T >= 2``); every projected gradient
    stays in the span of the originals, so the summed output is this combination of them.
    With no conflicting pair (or ``T < 2``) the weights are all ones (the plain sum).
    """
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"pcgrad_weights_from_gram: gram must be a square [T, T] tensor; got {shape}")
    coeff, _ = _pcgrad_coefficients(gram.detach().to(device="cpu", dtype=torch.float64), generator)
    return coeff.sum(dim=0)


class PCGrad(GramWeighted):
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task i, visiting the other tasks in a fresh random order, if the current g_i
    conflicts with the ORIGINAL g_j (g_i . g_j < 0) it is projected onto the normal plane
    of g_j; the projected gradients are SUMMED (the baseline's scale; some ports average).
    Only the shared gradients are projected: each head gets its own loss's gradient (a
    head's parameters receive no other task's gradient, so projecting them would only
    leak other heads' gradients into it).

    The projections run on the T x T float64 Gram matrix of the g_i (same projections, same
    random orders as :func:`functional.pcgrad`), which gives the summed output as a
    combination sum_k c_k g_k (:func:`functional.pcgrad_weights_from_gram`). Options: those of
    :class:`GramWeighted`, ``level`` defaulting to ``params`` (the paper's).
    """

    name = "pcgrad"
    style = ("#ff7f0e", "v")
    options = GramWeighted.level_default("params")

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return pcgrad_weights_from_gram(gram, generator=step.cpu_generator)

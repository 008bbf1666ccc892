"""Float64 Gram matrices, combinations of per-task gradients, and batched vector-Jacobian products.

The numerical building blocks every combiner shares:

* :func:`gram64`: ``flat @ flat.T`` of a [T, D] stack in float64, block by block;
* :func:`cross64`: ``block @ row`` in float64, block by block;
* :func:`combine`: ``weights @ flat`` for float64 weights, in the stack's dtype;
* :func:`well_conditioned_solve` (from :mod:`mtbench.combiners.solvers.certified`): ``G^{-1} b``
  for a symmetric matrix certified well conditioned by its Cholesky factor, else None;
* :func:`batched_vjp`: several vector-Jacobian products of one output in one vmapped autograd
  call, with a loop of plain calls where vmap cannot run the backward.

Blocks of :data:`BLOCK_COLUMNS` columns keep the extra memory bounded for large D, and neither
float32 accumulation nor a global TF32 setting can degrade the float64 products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtbench.combiners.solvers import COMPILED_BELOW
from mtbench.combiners.solvers.certified import MAX_CERTIFIED_CONDITION, well_conditioned_solve

__all__ = [
    "add_flat_grads",
    "BLOCK_COLUMNS",
    "COMPILED_BELOW",
    "MAX_CERTIFIED_CONDITION",
    "batched_vjp",
    "combine",
    "cross64",
    "gram64",
    "well_conditioned_solve",
]

#: columns per float64 block of a Gram product or a combination
BLOCK_COLUMNS = 1 << 15


def gram64(flat: Tensor) -> Tensor:
    """Gram matrix ``flat @ flat.T`` of a [T, D] stack, in float64 on ``flat``'s device.

    Lower-precision stacks are upcast to float64 :data:`BLOCK_COLUMNS` columns at a time.
    """
    n_tasks, dim = flat.shape
    if flat.dtype == torch.float64:
        return flat @ flat.T
    gram = torch.zeros(n_tasks, n_tasks, dtype=torch.float64, device=flat.device)
    for start in range(0, dim, BLOCK_COLUMNS):
        piece = flat[:, start : start + BLOCK_COLUMNS].to(torch.float64)
        gram += piece @ piece.T
    return gram


def cross64(block: Tensor, row: Tensor) -> Tensor:
    """``block @ row`` ([m, D] x [D]) in float64, :data:`BLOCK_COLUMNS` columns at a time."""
    out = torch.zeros(block.shape[0], dtype=torch.float64, device=block.device)
    if block.dtype == torch.float64:
        return block @ row
    for s in range(0, block.shape[1], BLOCK_COLUMNS):
        out += block[:, s : s + BLOCK_COLUMNS].double() @ row[s : s + BLOCK_COLUMNS].double()
    return out


def add_flat_grads(params: Sequence[Tensor], flat: Tensor) -> None:
    """Accumulate the flat gradient ``flat`` (the parameters' gradients concatenated in their
    order) into each parameter's ``.grad``."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        offset += n


def combine(weights: Tensor, flat: Tensor) -> Tensor:
    """``weights @ flat`` for float64 ``weights`` [T] and a [T, D] stack, in ``flat``'s dtype.

    On the CPU (or for float64 stacks) a single matmul in ``flat``'s dtype; on other devices
    blockwise in float64 so a global TF32 setting cannot degrade it.
    """
    if flat.device.type == "cpu" or flat.dtype == torch.float64:
        return weights.to(device=flat.device, dtype=flat.dtype) @ flat
    weights = weights.to(device=flat.device, dtype=torch.float64)
    out = torch.empty(flat.shape[1], dtype=flat.dtype, device=flat.device)
    for start in range(0, flat.shape[1], BLOCK_COLUMNS):
        piece = flat[:, start : start + BLOCK_COLUMNS].to(torch.float64)
        out[start : start + BLOCK_COLUMNS] = (weights @ piece).to(flat.dtype)
    return out


def batched_vjp(
    outputs: Tensor,
    inputs: Sequence[Tensor],
    cotangents: Tensor,
    retain_graph: bool = True,
    allow_unused: bool = False,
) -> list[Tensor | None]:
    """The vector-Jacobian products of ``outputs`` with each of the C ``cotangents``
    ([C, *outputs.shape]): one [C, *input.shape] tensor per input.

    C > 1: one vmapped autograd call (``is_grads_batched``), or, where vmap cannot run the
    backward (some compiled models, RNNs, AMP with normalisation), a loop of C plain calls;
    C = 1: one plain call. With ``allow_unused`` an input that no product reaches is None (in
    the loop, a row that does not reach it is zeros); a RuntimeError of the plain calls
    propagates.
    """
    inputs = list(inputs)
    n = cotangents.shape[0]
    if n > 1:
        try:
            return list(
                torch.autograd.grad(
                    outputs,
                    inputs,
                    grad_outputs=cotangents,
                    is_grads_batched=True,
                    retain_graph=retain_graph,
                    allow_unused=allow_unused,
                )
            )
        except RuntimeError:
            pass  # vmap cannot run this backward: one at a time
    rows = [
        torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=cotangents[i],
            retain_graph=retain_graph or i < n - 1,
            allow_unused=allow_unused,
        )
        for i in range(n)
    ]
    out: list[Tensor | None] = []
    for k, x in enumerate(inputs):
        col = [r[k] for r in rows]
        if all(g is None for g in col):
            out.append(None)
        elif n == 1:
            out.append(col[0].unsqueeze(0))
        else:
            out.append(torch.stack([torch.zeros_like(x) if g is None else g for g in col]))
    return out

"""Pure tensor functions behind the gradient combiners (no modules, no state).

Every function takes per-task gradients stacked along a leading task dimension ``T``
and returns either one combined gradient or one weight per task:

* :func:`graddrop` / :func:`random_graddrop` -- Gradient Sign Dropout, from
  Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai, D. Anguelov,
  "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
  NeurIPS 2020.  It acts on the gradients of the task losses with respect to a shared
  *activation* ``A`` (not the parameters).
* :func:`pcgrad` -- Projecting Conflicting Gradients, from T. Yu, S. Kumar, A. Gupta,
  S. Levine, K. Hausman, C. Finn, "Gradient Surgery for Multi-Task Learning",
  NeurIPS 2020 (Algorithm 1).
* :func:`mgda_weights` / :func:`mgda_weights_from_gram` -- the min-norm element of the
  convex hull of the task gradients used by MGDA-UB, from O. Sener and V. Koltun,
  "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (Sec. 3).
* the Gram-matrix methods :func:`upgrad`, :func:`dualproj`, :func:`imtl_g`,
  :func:`aligned_mtl`, :func:`cagrad`, :func:`fairgrad`, :func:`config`, :func:`gradvac` and
  :func:`nash_mtl` (mtbench's own solvers on the float64 Gram matrix, torchjd's weightings
  as the ``solver`` options of upgrad, dualproj, cagrad and fairgrad), each with its
  ``*_weights_from_gram``; every
  result is on mtbench's scale (T equal gradients g give T g), each docstring giving the
  factor against the paper and torchjd.

Randomness only ever comes from the ``generator`` argument (``None`` means torch's
global generator), and each function documents exactly which draws it makes, so that
results are reproducible from a seed.

Autograd, the same for every method: the weights (GradDrop's masks and its rescaling
factor, every solver's weights) are computed from detached inputs and carry no graph; the
result is their combination of ``grads``, so it is differentiable in ``grads`` as a fixed
(linear) combination of them. ``mgda_weights`` returns the weights alone (no graph).

No task (``T = 0``): every method returns zeros of shape ``grads.shape[1:]`` (the weights
functions an empty weight vector).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.linalg import BLOCK_COLUMNS, COMPILED_BELOW, combine, gram64, well_conditioned_solve

__all__ = [
    "graddrop",
    "random_graddrop",
    "graddrop_factored",
    "graddrop_transfer",
    "pcgrad",
    "pcgrad_weights_from_gram",
    "mgda_weights",
    "mgda_weights_from_gram",
    "upgrad",
    "upgrad_weights_from_gram",
    "dual_cone_state",
    "cagrad",
    "cagrad_weights_from_gram",
    "nash_mtl",
    "nash_mtl_weights_from_gram",
    "imtl_g",
    "imtl_g_weights_from_gram",
    "aligned_mtl",
    "aligned_mtl_weights_from_gram",
    "dualproj",
    "dualproj_weights_from_gram",
    "fairgrad",
    "fairgrad_weights_from_gram",
    "fairgrad_state",
    "config",
    "config_weights_from_gram",
    "gradvac",
    "gradvac_weights_from_gram",
    "gram_square_root",
]

#: allowed values of ``graddrop(f=...)``
GRADDROP_F = ("identity", "linear", "sigmoid")

LeakLike = Union[None, float, Sequence[float], Tensor]  # noqa: UP007 - a runtime alias, kept for Python 3.10


# ----------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------


def _check_grads(grads: Tensor, fn: str, min_dim: int = 1) -> None:
    if not isinstance(grads, Tensor):
        raise TypeError(f"{fn}: grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.dim() < min_dim:
        raise ValueError(
            f"{fn}: grads must have at least {min_dim} dimension(s) (tasks first); got shape {tuple(grads.shape)}"
        )
    if not grads.is_floating_point():
        raise ValueError(f"{fn}: grads must be a floating-point tensor; got dtype {grads.dtype}")


# ----------------------------------------------------------------------------------
# GradDrop
# ----------------------------------------------------------------------------------


def _leak_per_task(leak: LeakLike, n_tasks: int) -> Tensor | None:
    """Validate ``leak`` and return it as a float64 CPU tensor of shape [T] (or None)."""
    if leak is None:
        return None
    if isinstance(leak, bool):
        raise ValueError(f"leak must be a number in [0, 1] or one such number per task; got {leak!r}")
    try:
        if isinstance(leak, Tensor):
            values = leak.detach().to(device="cpu", dtype=torch.float64)
        else:
            values = torch.as_tensor(leak, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"leak must be None, a number in [0, 1] or a sequence of one number per task; got {leak!r}"
        ) from None
    if values.dim() == 0:
        values = values.expand(n_tasks)
    elif values.dim() == 1:
        if values.numel() != n_tasks:
            raise ValueError(
                f"leak has {values.numel()} values but there are {n_tasks} tasks; give one number or one per task"
            )
    else:
        raise ValueError(
            f"leak must be a number or a 1-D sequence with one number per task; got shape {tuple(values.shape)}"
        )
    bad = ~((values >= 0) & (values <= 1))  # also catches NaN
    if bool(bad.any()):
        raise ValueError(f"leak values must lie in [0, 1]; got {values[bad][0].item()!r}")
    return values


def _graddrop_core(
    grads: Tensor,
    activation: Tensor | None,
    leak: LeakLike,
    transfer,
    generator: torch.Generator | None,
    eps: float,
    renormalize: bool,
    fn: str,
) -> Tensor:
    """Shared body of :func:`graddrop` and :func:`random_graddrop`.

    ``transfer`` maps the purity P to the keep-positive probability f(P).
    """
    _check_grads(grads, fn)
    n_tasks = grads.shape[0]
    leak_values = _leak_per_task(leak, n_tasks)

    if activation is not None:
        if not isinstance(activation, Tensor):
            raise ValueError(f"{fn}: activation must be a tensor or None; got {type(activation).__name__}")
        if tuple(activation.shape) != tuple(grads.shape[1:]):
            raise ValueError(
                f"activation has shape {tuple(activation.shape)} but each task gradient has shape "
                f"{tuple(grads.shape[1:])}; activation must have the per-task gradient shape (batch first)"
            )
        if activation.dim() < 1:
            raise ValueError("activation must have a leading batch dimension; got a 0-d tensor")
        # batch-separated gradients: G_i = sum_b sign(A_b) * dL_i/dA_b   -> [T, *S[1:]]
        sign = torch.sign(activation).to(device=grads.device, dtype=grads.dtype)
        signed = (grads * sign.unsqueeze(0)).sum(dim=1)
    else:
        signed = grads

    weight = _keep_weights(signed, transfer, leak_values, eps, generator)
    if activation is not None:
        weight = weight.unsqueeze(1)  # broadcast the per-feature mask over the batch
    out = (weight * grads).sum(dim=0)
    return _rescaled(out, grads.sum(dim=0)) if renormalize else out


def _keep_weights(
    signed: Tensor, transfer, leak_values: Tensor | None, eps: float, generator: torch.Generator | None
) -> Tensor:
    """GradDrop's steps 2-5 on the signed gradients G [T, *P]: the purity P, ONE uniform draw of
    P's shape, the masks M_i, and the weights l_i + (1 - l_i) M_i [T, *P] (M_i without a leak)."""
    # Gradient Positive Sign Purity, one value per (feature) position.
    purity = 0.5 * (1.0 + signed.sum(dim=0) / (signed.abs().sum(dim=0) + eps))
    # exactly one uniform draw per position (so shared by the whole batch in batch mode)
    uniform = torch.rand(purity.shape, generator=generator, device=signed.device, dtype=signed.dtype)
    keep_positive_prob = transfer(purity)
    keep = ((keep_positive_prob > uniform) & (signed > 0)) | ((keep_positive_prob < uniform) & (signed < 0))
    weight = keep.to(signed.dtype)  # M_i, shape [T, *P.shape]
    if leak_values is not None:
        shape = (signed.shape[0],) + (1,) * (weight.dim() - 1)
        lk = leak_values.to(device=signed.device, dtype=signed.dtype).reshape(shape)
        weight = lk + (1.0 - lk) * weight
    return weight


def _rescaled(out: Tensor, target: Tensor) -> Tensor:
    """``out`` rescaled to the L2 norm of ``target`` (an all-zero ``out`` unchanged); the
    factor is computed from detached values (a weight, like the masks)."""
    norm, goal = out.detach().norm(), target.detach().norm()
    nonzero = norm > 0
    scale = torch.where(nonzero, goal / torch.where(nonzero, norm, torch.ones_like(norm)), torch.ones_like(norm))
    return out * scale


def graddrop(
    grads: Tensor,
    activation: Tensor | None = None,
    leak: LeakLike = None,
    f: str = "identity",
    k: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    eps: float = 1e-7,
    renormalize: bool = False,
) -> Tensor:
    """Gradient Sign Dropout (Chen et al., NeurIPS 2020, "Just Pick a Sign").

    Args:
        grads: ``[T, *S]`` -- ``grads[i] = dL_i/dA``, the gradient of task ``i``'s loss
            with respect to the shared activation ``A`` of shape ``S``.
        activation: the activation ``A`` itself (shape ``S``, batch first) to use the
            paper's *batch-separated* rule, or ``None`` to treat every element of ``S``
            as an independent scalar.
        leak: the paper's leak parameters ``l_i``: ``None`` (all 0), one number for
            every task, or one number per task; each in ``[0, 1]``.
        f: the monotone map applied to the purity: ``"identity"`` (``f(P) = P``, the
            paper's default), ``"linear"`` (``0.5 + k (P - 0.5)``) or ``"sigmoid"``
            (``sigmoid(4 k (P - 0.5))``; the factor 4 makes the slope at 1/2 equal ``k``).
            ``k`` is ignored for ``"identity"``. Note ``"linear"`` with ``k > 1`` leaves
            [0, 1], which only saturates the keep probability.
        k: slope of ``f``; must be finite.
        generator: source of the uniform draws (``None``: torch's global generator).
        eps: added to the denominator of the purity so all-zero positions give
            ``P = 1/2`` instead of 0/0.
        renormalize: rescale the output to the L2 norm of the plain sum ``sum_i grads[i]``
            (an all-zero output is returned unchanged).

    Returns:
        The combined gradient, shape ``S``, dtype and device of ``grads``.

    The computation, vectorised over tasks:

    1. Signed gradients ``G_i``: ``grads[i]`` itself, or in batch-separated mode
       ``G_i = sum_b sign(A[b]) * grads[i, b]`` (shape ``[T, *S[1:]]``).
    2. Gradient Positive Sign Purity ``P = 1/2 (1 + sum_i G_i / (sum_i |G_i| + eps))``.
    3. ``U ~ Uniform(0, 1)`` of ``P``'s shape, drawn with ONE call
       ``torch.rand(P.shape, generator=generator, device=grads.device, dtype=grads.dtype)``
       -- that is the only use of ``generator``. In batch-separated mode each feature
       gets one draw shared by the whole batch.
    4. Masks ``M_i = [f(P) > U] [G_i > 0] + [f(P) < U] [G_i < 0]`` (``G_i == 0`` gives 0):
       at each position either every positive-signed or every negative-signed task
       survives.
    5. Output ``sum_i (l_i + (1 - l_i) M_i) * grads[i]``, the masks broadcast over the
       batch dimension in batch-separated mode.

    The computation runs in ``grads``'s dtype.

    Raises:
        ValueError: leak of the wrong length or outside [0, 1], unknown ``f``,
            non-finite ``k``, or ``activation`` not shaped like one task gradient.
    """
    if f == "random":  # (graddrop_transfer's name for random_graddrop's constant)
        raise ValueError(f"f must be one of {', '.join(repr(x) for x in GRADDROP_F)}; got {f!r}")
    return _graddrop_core(grads, activation, leak, graddrop_transfer(f, k), generator, eps, renormalize, "graddrop")


def graddrop_transfer(f: str = "identity", k: float = 1.0):
    """GradDrop's map of the purity, ``f(P)`` (see :func:`graddrop`), as a function of a tensor;
    ``f="random"``: the constant 1/2 of :func:`random_graddrop`."""
    if f == "random":
        return lambda p: torch.full_like(p, 0.5)
    if not isinstance(f, str) or f not in GRADDROP_F:
        raise ValueError(f"f must be one of {', '.join(repr(x) for x in GRADDROP_F)}; got {f!r}")
    try:
        slope = float(k)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"k must be a finite number; got {k!r}") from None
    if not math.isfinite(slope):
        raise ValueError(f"k must be a finite number; got {k!r}")
    if f == "identity":
        return lambda p: p
    if f == "linear":
        return lambda p: 0.5 + slope * (p - 0.5)
    return lambda p: torch.sigmoid((4.0 * slope) * (p - 0.5))


def graddrop_factored(
    e: Tensor,
    weight: Tensor,
    activation: Tensor | None = None,
    leak: LeakLike = None,
    f: str = "identity",
    k: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    eps: float = 1e-7,
    renormalize: bool = False,
) -> Tensor:
    """:func:`graddrop` (``f="random"``: :func:`random_graddrop`) of per-task gradients that
    factor as ``grads[i, b] = e[b, i] * weight[i]``: linear heads (logits ``A W^T + b``, one
    per task) under per-column losses, ``e[b, i] = dL_i/dO[b, i]``.

    Args:
        e: ``[B, T]``; weight: ``[T, D]`` (the heads' weight); activation: ``[B, D]`` for the
            batch-separated rule, or None. The other arguments as :func:`graddrop`.

    Returns:
        ``[B, D]``: the same rule as :func:`graddrop` on the stack ``[T, B, D]``, which is
        never formed. Batch-separated: ``G = weight * (e^T sign(A))`` [T, D], and the output is
        ``e @ (M' * weight)`` with ``M' = l + (1 - l) M`` (two [T, B] x [B, D]-sized products).
        Per element: the sums of the positive and of the negative parts of the ``g_i`` are
        products of the positive and negative parts of ``e`` and ``weight``, and the output is
        ``sum_i l_i g_i + [f(P) > U] S+ + [f(P) < U] S-`` with ``S+-`` those sums weighted by
        ``1 - l_i``. The same uniform draw (one ``torch.rand`` of the purity's shape) as
        :func:`graddrop`; equal to it up to floating-point rounding (a mask can differ only
        where ``f(P)`` and ``U`` agree to rounding).
    """
    transfer = graddrop_transfer(f, k)
    fn = "random_graddrop_factored" if f == "random" else "graddrop_factored"
    if e.dim() != 2 or weight.dim() != 2 or e.shape[1] != weight.shape[0]:
        raise ValueError(f"{fn}: need e [B, T] and weight [T, D]; got {tuple(e.shape)} and {tuple(weight.shape)}")
    leak_values = _leak_per_task(leak, e.shape[1])
    total = e @ weight if renormalize or activation is None else None  # sum_i g_i [B, D], where needed
    if activation is not None:
        if tuple(activation.shape) != (e.shape[0], weight.shape[1]):
            raise ValueError(f"{fn}: activation must be [B, D] = {(e.shape[0], weight.shape[1])}")
        sign = torch.sign(activation).to(dtype=e.dtype)
        signed = weight * (e.T @ sign)  # [T, D]: G_i = sum_b sign(A_b) g_i[b]
        out = e @ (_keep_weights(signed, transfer, leak_values, eps, generator) * weight)
    else:
        lk = None if leak_values is None else leak_values.to(device=e.device, dtype=e.dtype)
        e_pos, e_neg = e.clamp(min=0), e.clamp(max=0)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        purity = 0.5 * (1.0 + total / ((e.abs() @ weight.abs()) + eps))
        uniform = torch.rand(purity.shape, generator=generator, device=e.device, dtype=e.dtype)
        p = transfer(purity)
        if lk is not None:  # (1 - l_i) into the tasks' columns, l_i g_i passes untouched
            drop = 1.0 - lk
            e_pos, e_neg = e_pos * drop, e_neg * drop
        pos = e_pos @ w_pos + e_neg @ w_neg  # sum of the positive parts g_i > 0
        neg = e_pos @ w_neg + e_neg @ w_pos  # ... and of the negative parts
        zero = torch.zeros_like(pos)
        out = torch.where(p > uniform, pos, zero) + torch.where(p < uniform, neg, zero)
        if lk is not None:
            out = out + (e * lk) @ weight
    return _rescaled(out, total) if renormalize else out


def random_graddrop(
    grads: Tensor,
    activation: Tensor | None = None,
    leak: LeakLike = None,
    generator: torch.Generator | None = None,
    *,
    eps: float = 1e-7,
    renormalize: bool = False,
) -> Tensor:
    """Random-sign control for GradDrop (Chen et al., NeurIPS 2020): ``f(P) := 1/2``.

    Exactly :func:`graddrop` with ``f(P)`` replaced by the constant 1/2: at every
    position (every feature in batch-separated mode) the positive-signed tasks are
    kept with probability 1/2 and the negative-signed ones otherwise, whatever the
    gradients. The signed gradients ``G_i`` (and so the grouping of tasks into
    positive/negative) are computed as in :func:`graddrop`, the generator is consumed
    identically (one ``torch.rand`` of ``P``'s shape), and ``leak``, ``eps`` and
    ``renormalize`` mean the same.

    Returns:
        The combined gradient, shape ``grads.shape[1:]``.
    """

    return _graddrop_core(
        grads, activation, leak, graddrop_transfer("random"), generator, eps, renormalize, "random_graddrop"
    )


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
    the visits run compiled, :func:`mtbench.combiners.loops.pcgrad_visits`.)
    """
    from mtbench.combiners.loops import pcgrad_visits

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
    (:func:`mtbench.combiners.loops.pcgrad_visits`, numba), one task after another, which is
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


# ----------------------------------------------------------------------------------
# MGDA: min-norm point of the convex hull
# ----------------------------------------------------------------------------------

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
#: Nash-MTL and FairGrad run compiled (:mod:`mtbench.combiners.loops`); from it on, batched in
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
    (:func:`mtbench.combiners.loops.wolfe_min_norm`, bit for bit the same iterations; the NumPy
    loop where an affine solve needs its least-squares fallback), else the NumPy loop."""
    n_tasks = g.shape[0]
    if n_tasks < _COMPILED_BELOW:
        if warm is None:
            support, w_s = np.array([int(np.argmin(g.diagonal()))], dtype=np.int64), np.ones(1)
        else:
            support, w_s = np.asarray(warm[0], dtype=np.int64), np.asarray(warm[1], dtype=np.float64)
        from mtbench.combiners.loops import wolfe_min_norm

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
    changes little from step to step, instead of about T from one vertex. From
    ``_PIVOT_MIN_TASKS`` (64) tasks on, block pivots from that active set come first
    (:func:`_min_norm_pivots`: one solve per guess, certified by the same stopping rule). A
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


# ----------------------------------------------------------------------------------
# Gram-matrix methods (torchjd's weightings where torchjd has them)
# ----------------------------------------------------------------------------------
#
# Each ``<name>_weights_from_gram(gram, ...)`` returns [T] float64 CPU weights w such that the
# shared gradient is sum_i w_i g_i on mtbench's scale (equal, agreeing gradients g_i = g give
# T g, the baseline's sum); each ``<name>(grads, ...)`` is that combination of the rows of a
# [T, D] stack (the Gram matrix accumulated in float64), shape grads.shape[1:].


def _combine_rows(grads: Tensor, fn: str, weights_from_gram, **options) -> Tensor:
    _check_grads(grads, fn)
    if grads.shape[0] == 0:
        return grads.sum(dim=0)  # no task: zeros
    flat = grads.reshape(grads.shape[0], -1)
    weights = weights_from_gram(gram64(flat.detach()).cpu(), **options)
    return combine(weights, flat).reshape(grads.shape[1:])


def _check_option(fn: str, name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{fn}: {name} must be {allowed}; got {value!r}")


#: the ridge quadprog's dual-cone solves add to the unit gradients' Gram matrix (torchjd's
#: default 1e-4 on the trace-normalised raw one leaves small tasks' constraints unenforced
#: when one task is much larger)
DUAL_CONE_REG = 1e-9


DUAL_CONE_SOLVERS = ("active_set", "quadprog")
#: block principal pivoting's sweeps before the QPs fall back to quadprog (a safeguard; the tests force it)
_PIVOT_MAX_SWEEPS = 100


def _dual_cone_pivoting(a: Tensor, u: Tensor, free: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """V [R, T] with V[r] = argmin_v 1/2 v^T A v subject to v >= U[r] for each row of ``u``
    [R, T], A [T, T] positive definite, the final free sets (v > U) [R, T] and which rows
    settled [R] (a row that did not settle within ``_PIVOT_MAX_SWEEPS`` sweeps has no
    solution in V); None if a Cholesky factorisation failed.

    With x = v - U[r] >= 0 each row is the linear complementarity problem y = A x + A U[r] >= 0,
    x >= 0, x . y = 0 (a positive definite matrix: one solution). Block principal pivoting
    (Judice & Pires 1994, with Kim & Park's 2011 safeguard): for a guess F of the positive
    x's, x_F solves A_FF x_F = -(A U[r])_F and y = A x + A U[r] outside F; the entries where
    x < 0 in F or y < 0 outside F move across, all at once while their number falls (three
    more tries otherwise), else only the last one. Every row pivots at once: one batched
    Cholesky solve per sweep, of the free sets' systems (padded to the largest one; torch's
    LAPACK, :func:`_free_set_solve`); from ``_TORCH_SOLVE_SIZE`` tasks on, in a sweep whose
    free sets are large (``_CG_MIN_WIDTH_CUBED``), conjugate gradients from the last sweep's x (:func:`_free_set_cg`: [R, T] x [T, T] products instead
    of R factorisations, each row's true residual checked to 1e-2 of the pivoting's
    tolerance), until a sweep in which they do not converge for some row (an ill-conditioned
    A): Cholesky solves those rows and every later sweep. ``free`` (the last step's sets) is
    the first guess; None: all x = 0. The bookkeeping between the solves runs in NumPy. Below
    ``_COMPILED_BELOW`` tasks the same pivoting runs compiled, each row's sweeps one after
    another (:func:`mtbench.combiners.loops.dual_cone_pivots`): at T = 40 a batched sweep
    costs more in calls than the compiled one's factorisations of its small free sets."""
    an = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    un = u.detach().to(device="cpu", dtype=torch.float64).numpy()
    rows, n = un.shape
    scale = float(an.diagonal().max()) * max(float(np.abs(un).max()), 1e-300)
    tol = 1e-13 * scale
    f = np.zeros((rows, n), dtype=bool) if free is None else free.numpy().astype(bool, copy=True)
    if n < _COMPILED_BELOW:  # each row's sweeps one after another, compiled
        from mtbench.combiners.loops import dual_cone_pivots

        v, settled = np.empty((rows, n)), np.empty(rows, dtype=bool)
        if not dual_cone_pivots(an, un, f.copy(), tol, _PIVOT_MAX_SWEEPS, v, f, settled):
            return None
        return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(settled)
    q = _matvec(un, an)  # [R, T]: (A U[r]) (A symmetric)
    best = np.full(rows, n + 1)
    tries = np.full(rows, 3)
    last = np.arange(n)
    x = np.zeros((rows, n))
    y = q.copy()
    todo = np.arange(rows)  # the rows whose free set changed: only they are solved again
    count = np.ones(rows, dtype=np.int64)  # (no sweep yet: no row settled)
    every = np.arange(rows)
    use_cg = n >= _TORCH_SOLVE_SIZE  # conjugate gradients while they converge (:func:`_free_set_cg`)
    for _ in range(_PIVOT_MAX_SWEEPS):
        if use_cg and int(f[todo].sum(1).max(initial=0)) ** 3 > _CG_MIN_WIDTH_CUBED * n * n:
            xs, solved = _free_set_cg(an, q[todo], f[todo], x[todo], 1e-2 * tol)
            if not solved.all():  # ill-conditioned: Cholesky for these rows, and from here on
                use_cg = False
                rest = _free_set_solve(an, q[todo][~solved], f[todo][~solved])
                if rest is None:
                    return None
                xs[~solved] = rest
        else:
            xs = _free_set_solve(an, q[todo], f[todo])
            if xs is None:
                return None
        x[todo] = xs
        y[todo] = _matvec(xs, an) + q[todo]
        bad = np.where(f, x < -tol, y < -tol)
        count = bad.sum(1)
        if not count.any():
            break
        fewer = count < best
        best = np.where(fewer, count, best)
        tries = np.where(fewer, 3, tries - (count > 0))
        all_at_once = fewer | (tries >= 0)
        only_last = np.zeros_like(bad)
        only_last[every, np.maximum(np.where(bad, last, -1).max(1), 0)] = True
        f = f ^ np.where(all_at_once[:, None], bad, bad & only_last)
        todo = np.flatnonzero(count > 0)
    v = un + np.maximum(x, 0.0) * f
    return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(count == 0)


#: conjugate-gradient iterations per sweep before a row's free-set system goes to Cholesky
_CG_MAX_ITER = 60
#: a sweep takes conjugate gradients when its largest free set w has w^3 > this times T^2: the
#: batched factorisations (w^3 / 3 each, at a few GFLOP/s) would then cost more than about 20
#: T x T products at BLAS speed (measured at T = 400: small free sets are cheaper by Cholesky)
_CG_MIN_WIDTH_CUBED = 6


def _free_set_cg(
    a: np.ndarray, q: np.ndarray, f: np.ndarray, x0: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """X [R, T] as :func:`_free_set_solve`'s, by conjugate gradients on every row's free-set
    system at once (A_FF is a principal submatrix of the positive definite A: at most A's
    condition number), from ``x0`` restricted to the free sets: one [R, T] x [T, T] product
    per iteration instead of R Cholesky factorisations of up to T unknowns. A row counts as
    solved when its true residual |(A x + q)_F| is at most ``tol`` everywhere (checked
    after the iterations, not the recurrence's); ``solved`` [R] says which rows are (the
    others want an exact factorisation)."""
    at = torch.from_numpy(a)
    m = torch.from_numpy(f.astype(np.float64))
    b = -torch.from_numpy(q) * m
    x = torch.from_numpy(x0).clamp_min(0.0) * m
    r = b - (x @ at) * m
    p = r.clone()
    rs = (r * r).sum(1)
    for _ in range(_CG_MAX_ITER):
        if not bool((r.abs().amax(1) > tol).any()):
            break
        ap = (p @ at) * m
        pap = (p * ap).sum(1)
        alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta[:, None] * p
        rs = rs_new
    residual = (b - (x @ at) * m).abs().amax(1) if x.shape[0] else torch.zeros(0, dtype=x.dtype)
    return x.numpy(), (residual <= tol).numpy()


def _free_set_solve(a: np.ndarray, q: np.ndarray, f: np.ndarray) -> np.ndarray | None:
    """X [R, T] with X[r]_F = -(A_FF)^-1 q[r]_F on row r's free set F = f[r] and 0 elsewhere:
    one batched Cholesky factorisation and solve (torch's LAPACK), each row's system padded
    with identity rows to the largest free set; None if a factorisation failed. (Solving the
    whole [T, T] systems with the fixed entries masked to the identity instead, without the
    gathers, was slower at T = 40: the factorisations cost more than the gathers.)"""
    rows, n = f.shape
    sizes = f.sum(1)
    xs = np.zeros((rows, n))
    width = int(sizes.max()) if rows else 0  # the largest free set: every row's system padded to it
    if width == 0:
        return xs
    # each row's free indices first (the rest pad the system with identity rows)
    idx = torch.from_numpy(np.argsort(~f, axis=1, kind="stable")[:, :width])
    valid = (torch.arange(width)[None, :] < torch.from_numpy(sizes)[:, None]).to(torch.float64)
    sub = torch.from_numpy(a)[idx[:, :, None], idx[:, None, :]] * (valid[:, :, None] * valid[:, None, :])
    sub.diagonal(dim1=1, dim2=2).add_(1.0 - valid)
    factor, info = torch.linalg.cholesky_ex(sub)
    if bool(info.any()):
        return None
    rhs = -torch.from_numpy(q).gather(1, idx) * valid
    torch.from_numpy(xs).scatter_(1, idx, torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1) * valid)
    return xs


def _quadprog_projector(method: str):
    """torchjd's quadprog projector with mtbench's ridge (it scales the Gram matrix to trace 1
    and adds ``DUAL_CONE_REG`` I, the matrix of :func:`_dual_cone_pivoting`)."""
    from mtbench.combiners.jd import require

    require("UPGradWeighting", method)  # a missing solver package is a one-line error here
    import torchjd.linalg as jdl

    return jdl.QuadprogProjector(reg_eps=DUAL_CONE_REG)


def dual_cone_state(
    gram: Tensor, method: str = "upgrad", solver: str = "active_set", start: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """UPGrad's (``method="upgrad"``) or DualProj's (``"dualproj"``) weights from the Gram
    matrix, and the solver's final free sets (the next solve's ``start``; None for quadprog).

    The dual cone {x : g_j . x >= 0} is that of the unit gradients g_j / ||g_j||, so the QPs
    run on their Gram matrix (diagonal 1) divided by its trace, plus 1e-9 I (``DUAL_CONE_REG``),
    with the preference (the mean's, 1 / T) scaled by the norms; the weights are mapped back
    to the g_i. UPGrad projects each g_i (T QPs, preference rows p_i e_i) and sums; DualProj
    projects the sum (one QP, preference row p). ``solver="active_set"`` (default; mtbench's):
    block principal pivoting on all the QPs at once (:func:`_dual_cone_pivoting`), from
    ``start``, the exact solution of the same QPs, with quadprog solving the rows on which the
    pivoting does not settle (every row should a factorisation fail); ``"quadprog"``: torchjd's ``UPGradWeighting`` / ``DualProjWeighting``
    with its quadprog projector (same matrix, same ridge)."""
    from mtbench.combiners.jd import gram_np64

    _check_option(method, "solver", solver, solver in DUAL_CONE_SOLVERS, "one of " + ", ".join(DUAL_CONE_SOLVERS))
    return _dual_cone(gram_np64(gram, method), method, solver, start)


def _dual_cone(g: np.ndarray, method: str, solver: str, start: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """:func:`dual_cone_state` on the checked, symmetric float64 Gram matrix ``g``: below
    ``_COMPILED_BELOW`` tasks in one compiled call where it applies
    (:func:`mtbench.combiners.loops.dual_cone_weights`: no zero gradient, every row settled;
    the same arithmetic as the code below), else the code below."""
    from mtbench.combiners.jd import weighting

    n_tasks = g.shape[0]
    rows = n_tasks if method == "upgrad" else 1
    if solver == "active_set" and n_tasks < _COMPILED_BELOW:
        from mtbench.combiners.loops import dual_cone_weights

        first = np.zeros((rows, n_tasks), dtype=bool)
        if start is not None and tuple(start.shape) == (rows, n_tasks):
            first = start.numpy().astype(bool)
        weights, free = np.empty(n_tasks), np.empty((rows, n_tasks), dtype=bool)
        if dual_cone_weights(
            np.ascontiguousarray(g), method == "upgrad", first, DUAL_CONE_REG, _PIVOT_MAX_SWEEPS, weights, free
        ):
            return torch.from_numpy(weights), torch.from_numpy(free)
    norms, inv = _norms_and_inverses(g)
    if not bool((inv > 0).any()):
        return torch.full((n_tasks,), 1.0, dtype=torch.float64), None
    units = g * inv[:, None] * inv[None, :]
    pref = norms / n_tasks
    cls_name = "UPGradWeighting" if method == "upgrad" else "DualProjWeighting"
    unit_weights, free = None, None
    if solver == "active_set":
        a = units / units.diagonal().sum() + DUAL_CONE_REG * np.eye(n_tasks)
        u = torch.from_numpy(np.diag(pref) if method == "upgrad" else pref[None, :])
        if start is not None and tuple(start.shape) != tuple(u.shape):
            start = None
        solved = _dual_cone_pivoting(torch.from_numpy(a), u, start)
        if solved is not None:
            v, free, settled = solved
            if not bool(settled.all()):  # quadprog solves the rows that did not settle
                v, rest = v.clone(), ~settled
                v[rest] = _quadprog_projector(method)(u[rest], torch.from_numpy(units))
                free = free.clone()
                free[rest] = v[rest] > u[rest]
            unit_weights = v.numpy().sum(0)
    if unit_weights is None:
        jd = weighting(cls_name, method, pref_vector=torch.from_numpy(pref), projector=_quadprog_projector(method))
        unit_weights = jd(torch.from_numpy(units)).to(torch.float64).numpy()
    return torch.from_numpy(n_tasks * unit_weights * inv), free


def _norms_and_inverses(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gradients' norms ||g_i|| from their Gram matrix and their inverses (0 for a zero
    gradient)."""
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    inv = np.zeros_like(norms)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return norms, inv


def upgrad_weights_from_gram(gram: Tensor, solver: str = "active_set") -> Tensor:
    """UPGrad (Quinton & Rey 2024): the mean of the projections of every g_i onto the dual cone
    of all the g_j, times T, computed on the unit gradients' Gram matrix plus 1e-9 I
    (``DUAL_CONE_REG``; :func:`dual_cone_state`): by mtbench's block principal pivoting
    (``solver="active_set"``) or torchjd's ``UPGradWeighting`` with quadprog (``"quadprog"``),
    the same QPs. torchjd's default ``UPGrad()`` regularises the raw Gram matrix divided by its
    trace by 1e-4 I, which differs by about 1e-4 and leaves a task 1e4 times smaller than another
    practically unconstrained."""
    return dual_cone_state(gram, "upgrad", solver)[0]


def upgrad(grads: Tensor, solver: str = "active_set") -> Tensor:
    """UPGrad of the rows of ``grads`` [T, D]: the sum of the projections of the g_i onto the
    dual cone {x : g_j . x >= 0 for all j} (T x torchjd's ``UPGrad()``, up to its ridge)."""
    return _combine_rows(grads, "upgrad", upgrad_weights_from_gram, solver=solver)


def dualproj_weights_from_gram(gram: Tensor, solver: str = "active_set") -> Tensor:
    """DualProj (GEM's projection, Lopez-Paz & Ranzato 2017, eq. 11, of the summed gradient):
    T times torchjd's ``DualProjWeighting`` (the mean projected onto the dual cone), on the
    unit gradients as for :func:`upgrad_weights_from_gram` (same solvers)."""
    return dual_cone_state(gram, "dualproj", solver)[0]


def dualproj(grads: Tensor, solver: str = "active_set") -> Tensor:
    """DualProj of the rows of ``grads``: sum_i g_i projected onto the dual cone of the g_j
    (T x torchjd's ``DualProj()``, up to its ridge)."""
    return _combine_rows(grads, "dualproj", dualproj_weights_from_gram, solver=solver)


def imtl_g_weights_from_gram(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al. 2021, the gradient part): T times the weights of torchjd's
    ``IMTLGWeighting()`` (w proportional to pinv(G) ||g||, normalised to sum 1, zero when that
    sum is below 1e-12; the combination has equal projections on every unit gradient
    u_i = g_i / ||g_i||), mtbench's own code of that formula: where G's Cholesky factor certifies
    it well conditioned (:func:`~mtbench.combiners.linalg.well_conditioned_solve`) pinv(G) ||g|| is
    G^{-1} ||g|| and comes from two triangular solves, else from ``torch.linalg.pinv`` as in
    torchjd (the same numbers to rounding; about 7 times faster at T = 400, scripts/bench_solvers.py)."""
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "imtl_g")
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    v = well_conditioned_solve(g, norms)
    if v is None:
        v = torch.linalg.pinv(torch.from_numpy(g)).numpy() @ norms
    total = float(v.sum())
    if not abs(total) >= 1e-12:
        return torch.zeros(g.shape[0], dtype=torch.float64)
    return torch.from_numpy(g.shape[0] * (v / total))


def imtl_g(grads: Tensor) -> Tensor:
    """IMTL-G of the rows of ``grads``: T x torchjd's ``IMTLG()``."""
    return _combine_rows(grads, "imtl_g", imtl_g_weights_from_gram)


ALIGNED_MTL_SCALES = ("min", "median", "rmse")


def aligned_mtl_weights_from_gram(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL (Senushkin et al. 2023, Algorithm 1): T times torchjd's
    ``AlignedMTLWeighting(scale_mode=...)`` (the gradients whitened to an orthogonal system
    with equal singular values, sigma_min, the median or the mean eigenvalue's root), mtbench's
    own code of torchjd's formula: with G = V diag(lambda) V^T and the eigenvalues above
    T eps max(lambda) kept, alpha = sqrt(scale) V_k diag(lambda_k^(-1/2)) V_k^T (1 / T) (the
    identity, so alpha = 1 / T, when none is kept), applied to the vector instead of forming
    the T x T balance matrix (faster than torchjd's: rows ``aligned_mtl`` and
    ``aligned_mtl-torchjd`` of ``scripts/bench_solvers.py``)."""
    from mtbench.combiners.jd import gram_np64

    _check_option(
        "aligned_mtl",
        "scale_mode",
        scale_mode,
        scale_mode in ALIGNED_MTL_SCALES,
        "one of " + ", ".join(ALIGNED_MTL_SCALES),
    )
    g = gram_np64(gram, "aligned_mtl")
    n_tasks = g.shape[0]
    evals, evecs = (x.numpy() for x in torch.linalg.eigh(torch.from_numpy(g)))
    keep = evals > evals.max() * n_tasks * np.finfo(np.float64).eps
    if not bool(keep.any()):
        return torch.ones(n_tasks, dtype=torch.float64)
    lam, vec = evals[keep], evecs[:, keep]
    if scale_mode == "min":
        scale = lam.min()
    elif scale_mode == "median":
        scale = float(torch.median(torch.from_numpy(lam)))  # (torch's median: the lower middle value)
    else:
        scale = lam.mean()
    mean = np.full(n_tasks, 1.0 / n_tasks)
    alpha = math.sqrt(scale) * (vec @ ((vec.T @ mean) / np.sqrt(lam)))
    return torch.from_numpy(n_tasks * alpha)


def aligned_mtl(grads: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL of the rows of ``grads``: T x torchjd's ``AlignedMTL(scale_mode=...)``."""
    return _combine_rows(grads, "aligned_mtl", aligned_mtl_weights_from_gram, scale_mode=scale_mode)


CAGRAD_SOLVERS = ("active_set", "cvxpy")
#: a ||g_w|| below it (the Gram matrix scaled to trace 1) is zero: the Pareto front (float64
#: Gram entries resolve ||g_w||^2 to about 1e-16, so ||g_w|| to about 1e-8)
_CAGRAD_FRONT = 1e-6
_CAGRAD_MAX_ITER = 100


def _cagrad_piece(g: np.ndarray, a: np.ndarray, s: float, support: list[int]) -> tuple[float, np.ndarray] | None:
    """The root t > 0 of ||g_w(t)|| = s t along the piece of the path on which ``support`` is
    the active set, and w(t) there; None if the piece's equation has no such root.

    On that piece w(t) = w0 + t w1 is affine (the KKT system of min ||g_w + t g0||^2 over the
    affine hull of ``support``, right-hand sides [0; 1] and [-a_S; 0]), so
    ||g_w(t)||^2 - s^2 t^2 = A + 2 B t + (C - s^2) t^2 is a quadratic: its root where it turns
    negative (the dual's h(t) = ||g_w(t)|| / t - s is non-increasing in t)."""
    m = len(support)
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = g[np.ix_(support, support)]
    kkt[:m, m] = -1.0
    kkt[m, :m] = 1.0
    rhs = np.zeros((m + 1, 2))
    rhs[m, 0] = 1.0
    rhs[:m, 1] = -a[support]
    sol = _solve(kkt, rhs)
    if not bool(np.isfinite(sol).all()):
        return None
    w0, w1 = sol[:m, 0], sol[:m, 1]
    gs = kkt[:m, :m]
    g01 = _matvec(gs, sol[:m])  # [G_S w0, G_S w1]
    g0w, g1w = g01[:, 0], g01[:, 1]
    quad_a, quad_b, quad_c = float(w0 @ g0w), float(w0 @ g1w), float(w1 @ g1w) - s * s
    # roots of quad_a + 2 quad_b t + quad_c t^2 (numerically stable form)
    disc = quad_b * quad_b - quad_a * quad_c
    if disc < 0:
        return None
    q = -(quad_b + math.copysign(math.sqrt(disc), quad_b))
    roots = [r for r in ((q / quad_c) if quad_c != 0 else math.inf, (quad_a / q) if q != 0 else math.inf)]
    falling = [r for r in roots if math.isfinite(r) and r > 0 and quad_b + quad_c * r <= 0]
    if not falling:
        return None
    t = min(falling)
    return t, w0 + t * w1


def _cagrad_candidate_np(
    g: np.ndarray, a: np.ndarray, s: float, n0: float, support: list[int], lo: float, hi: float, diag: np.ndarray
) -> tuple[int, float, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mtbench.combiners.loops.cagrad_candidate` in NumPy (from ``_COMPILED_BELOW`` tasks
    on, and where the piece's system is singular: least squares): the piece's root in
    [lo, hi] (code 0: none) and its certificate (1: certified, 2: not)."""
    piece = _cagrad_piece(g, a, s, support)
    if piece is None or not lo * (1 - 1e-12) <= piece[0] <= hi * (1 + 1e-12):
        return 0, 0.0, np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    t, w_t = piece
    negative = w_t < -1e-12 * float(np.abs(w_t).max())
    w_c = np.clip(w_t, 0.0, None)
    w_c = w_c / w_c.sum()
    # the min-norm optimality at t of every task: (G_t w)_j >= w^T G_t w
    gw = _matvec(g[:, support], w_c)
    aw = float(a[support] @ w_c)
    gtw = gw + t * a + t * (aw + t * n0)
    obj = float(w_c @ gw[support]) + 2 * t * aw + t * t * n0
    floor = _GAP_FLOOR * float((diag + 2 * t * a + t * t * n0).max())
    violated = gtw < obj - max(_DEFAULT_MGDA_TOL * obj, floor)
    return (2 if bool(negative.any()) or bool(violated.any()) else 1), t, w_c, negative, violated


def _cagrad_dual(g: np.ndarray, c: float, start: tuple[list[int], np.ndarray] | None) -> tuple[np.ndarray, float]:
    """The simplex weights w minimising g_w . g0 + c ||g0|| ||g_w|| (CAGrad's dual problem,
    ``g`` the float64 Gram matrix scaled to trace 1) and t = ||g_w|| / (c ||g0||); t = 0 when
    ||g_w|| is below the Pareto-front threshold.

    For mu = 1 / t > 0 the dual's optimality conditions are those of
    min_w g_w . g0 + (mu / 2) ||g_w||^2 = (mu / 2) ||g_w + t g0||^2 - const, i.e. MGDA's
    min-norm problem on the points g_i + t g0 (the projection of -t g0 onto the hull of the
    g_i), with the extra equation ||g_w|| = c ||g0|| t. Along t the active set changes finitely
    often and on each piece the equation is a quadratic (:func:`_cagrad_piece`), so: solve it
    on the current active set and certify the result (weights >= 0, the min-norm optimality of
    every task at that t). A failed certificate first gives the next active set to try at once
    (the negative weights dropped, the violated tasks added; up to ``_BLOCK_PIVOTS`` times),
    then Wolfe's algorithm at that t (warm) gives it, keeping a bracket [lo, hi] of the root
    (bisection when a piece's root falls outside it). Only a certified solution is returned
    before ``_CAGRAD_MAX_ITER`` iterations."""
    n_tasks = g.shape[0]
    a = g.mean(axis=1)  # a_i = g_i . g0
    n0 = float(a.mean())  # ||g0||^2
    s = c * math.sqrt(max(n0, 0.0))
    diag = g.diagonal()
    # every ||g_i|| <= 1, so the root t* = ||g_w*|| / s lies in (0, 1 / s]; below t_front,
    # ||g_w*|| is below the Pareto-front threshold
    lo, hi, t_front = 0.0, 1.0 / s, _CAGRAD_FRONT / s
    if start is None:  # far along the path, the projection of -t g0 is the vertex of least g_i . g0
        support, w_s = [int(np.argmin(a))], np.ones(1)
    else:
        support, w_s = start
    t = hi
    pivots = _BLOCK_PIVOTS
    compiled = n_tasks < _COMPILED_BELOW
    if compiled:
        from mtbench.combiners.loops import cagrad_candidate
    for iteration in range(_CAGRAD_MAX_ITER):
        code = 3
        if compiled:  # the same candidate and certificate in one compiled call
            code, t_c, w_c, negative, violated = cagrad_candidate(
                g, a, s, n0, np.asarray(support, dtype=np.int64), lo, hi, _DEFAULT_MGDA_TOL, _GAP_FLOOR
            )
        if code == 3:
            code, t_c, w_c, negative, violated = _cagrad_candidate_np(g, a, s, n0, support, lo, hi, diag)
        if code == 1:
            w = np.zeros(n_tasks)
            w[support] = w_c
            return w, t_c
        if code == 2:
            t = t_c
            if pivots > 0:  # guess the next active set at once: drop the negative, add the violated
                pivots -= 1
                keep, added = _next_active_set(support, negative, violated)
                if keep or added:
                    w_keep = w_c[~negative]
                    support = keep + added
                    w_s = np.concatenate([w_keep / w_keep.sum() if keep else w_keep, np.zeros(len(added))])
                    if not keep:
                        w_s[0] = 1.0
                    continue
            if iteration >= _CAGRAD_MAX_ITER // 2:  # (slow progress: bisect from now on)
                t = 0.5 * hi if lo == 0 else math.sqrt(lo * hi)
        else:  # no usable root on this piece: bisect
            t = 0.5 * hi if lo == 0 else math.sqrt(lo * hi)
        # the active set at t, and which side of the root t is on
        gt = g + t * (a[:, None] + a[None, :]) + t * t * n0
        support, w_s = _wolfe(
            gt / float(gt.diagonal().max()), _DEFAULT_MGDA_TOL, _DEFAULT_MGDA_MAX_ITER, (support, w_s)
        )
        r = math.sqrt(max(float(w_s @ g[np.ix_(support, support)] @ w_s), 0.0))
        if r > s * t:
            lo = t
        else:
            hi = t
        if hi <= t_front:  # the root lies below the threshold: the Pareto front
            return np.full(n_tasks, 1.0 / n_tasks), 0.0
    w = np.zeros(n_tasks)
    w[support] = w_s
    return w, t


def cagrad_weights_from_gram(gram: Tensor, c: float = 0.4, solver: str = "active_set") -> Tensor:
    """CAGrad (Liu et al. 2021, Algorithm 1): T / (1 + c) times the weights of
    d = g0 + sqrt(phi) / ||g_w|| g_w, g0 the mean gradient, sqrt(phi) = c ||g0||, g_w = sum_i w_i g_i
    with w on the simplex minimising g_w . g0 + sqrt(phi) ||g_w|| (the dual problem). Equal
    agreeing gradients give d = (1 + c) g0, so the factor T / (1 + c) puts them at the
    baseline's sum (the authors' code's ``rescale=2`` divides by 1 + c too).

    Solvers of the dual problem, on the Gram matrix scaled to trace 1 (torchjd's scaling):

    * ``active_set`` (default): mtbench's own, exact to rounding: the dual's optimality
      conditions are MGDA's min-norm problem on the shifted points g_i + t g0 with the one
      extra equation ||g_w|| = c ||g0|| t, which is a quadratic in t while the active set stays
      the same; each candidate is certified by the optimality conditions, else the failed
      certificate or Wolfe's algorithm at that t gives the next active set
      (:func:`cagrad_state`; warm-started from the last step's weights).
    * ``cvxpy``: torchjd's ``CAGradWeighting(c)`` (cvxpy's CLARABEL interior-point solver).

    On the Pareto front (the dual's optimum has g_w = 0, e.g. with a zero task or
    0 inside the hull and c >= 1: ||g_w|| < 1e-6 on the trace-1 scale) the formula is 0 / 0 and
    every d in the ball with g_i . d >= 0 for all i is optimal; mtbench takes the one nearest
    g0, the projection of g0 onto the dual cone (DualProj's update, divided by 1 + c). torchjd
    returns zero weights there, and also wherever ||g_w|| < 1e-4 (e.g. a task 1e4 times larger
    than the rest) or the trace of the Gram matrix itself is below 1e-4 (small gradients);
    the authors' code returns about g0 + c ||g0|| times an unresolved direction."""
    return cagrad_state(gram, c, solver)[0]


def cagrad_state(
    gram: Tensor, c: float = 0.4, solver: str = "active_set", start: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """:func:`cagrad_weights_from_gram` and the dual problem's simplex weights (the next
    solve's ``start``: their tasks are the first active set; None for the cvxpy solver)."""
    return cagrad_solve(gram, c, solver, start)[:2]


def cagrad_solve(
    gram: Tensor,
    c: float = 0.4,
    solver: str = "active_set",
    start: Tensor | None = None,
    front_start: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`cagrad_state`, and the free set of the Pareto front's dual-cone projection
    (:func:`dual_cone_state`'s state, None where the step was not on the front), which
    ``front_start`` gives back to the next front step's projection (the combiner keeps both)."""
    from mtbench.combiners.jd import gram_np64, weighting

    _check_option(
        "cagrad",
        "c",
        c,
        isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0,
        "a finite number >= 0",
    )
    _check_option("cagrad", "solver", solver, solver in CAGRAD_SOLVERS, "one of " + ", ".join(CAGRAD_SOLVERS))
    g = gram_np64(gram, "cagrad")
    n_tasks = g.shape[0]
    factor = n_tasks / (1.0 + float(c))
    if solver == "cvxpy":
        return weighting("CAGradWeighting", "cagrad", c=float(c))(torch.from_numpy(g)) * factor, None, None
    trace = float(g.diagonal().sum())
    gn = g / trace if trace > 0 else None
    if gn is None or c == 0 or not float(gn.mean()) > 0:
        # c = 0, zero gradients or a zero mean gradient: d = g0
        return torch.full((n_tasks,), factor / n_tasks, dtype=torch.float64), None, None
    w, t = _cagrad_dual(gn, float(c), _warm_support(start, n_tasks))
    g_w = math.sqrt(max(float(w @ gn @ w), 0.0))
    if t == 0 or g_w < _CAGRAD_FRONT:  # the Pareto front: g0 projected onto the dual cone
        projected, front = _dual_cone(g, "dualproj", "active_set", front_start)
        return projected / (1.0 + float(c)), None, front
    sqrt_phi = float(c) * math.sqrt(float(gn.mean()))
    return torch.from_numpy(1.0 / n_tasks + (sqrt_phi / g_w) * w) * factor, torch.from_numpy(w), None


def cagrad(grads: Tensor, c: float = 0.4, solver: str = "active_set") -> Tensor:
    """CAGrad of the rows of ``grads`` (see :func:`cagrad_weights_from_gram` for the solvers
    and the scale): T / (1 + c) x torchjd's ``CAGrad(c)``."""
    return _combine_rows(grads, "cagrad", cagrad_weights_from_gram, c=c, solver=solver)


def _projection_scale(g: np.ndarray, w: np.ndarray) -> float:
    """The factor s >= 0 for which s sum_i w_i g_i is the projection of sum_i g_i onto the
    direction sum_i w_i g_i: s = 1^T G w / w^T G w (0 when the combination is zero)."""
    gw = g @ w
    norm2 = float(w @ gw)
    along = float(gw.sum())
    if not (norm2 > 0 and math.isfinite(norm2)):
        return 0.0
    return max(along, 0.0) / norm2


def _frobenius(g: np.ndarray) -> float:
    """||g||_F, summed by NumPy without BLAS (a BLAS dot's threads would contend with torch's)."""
    return math.sqrt(float(np.square(g).sum()))


FAIRGRAD_SOLVERS = ("newton", "scipy")


def fairgrad_weights_from_gram(
    gram: Tensor,
    alpha: float = 1.0,
    max_iters: int | None = None,
    rescale: bool = True,
    solver: str = "newton",
    start: Tensor | None = None,
) -> Tensor:
    """FairGrad (Ban & Ji 2024, eq. 4): w > 0 solving G w = w^(-1/alpha).

    ``solver="newton"`` (the default; mtbench's own): w minimises the strictly convex
    1/2 w^T G w - sum_i psi(w_i) with psi'(w) = w^(-1/alpha) (psi = log for alpha = 1, where
    FairGrad's equation is Nash-MTL's), whose gradient G w - w^(-1/alpha) vanishes exactly at
    FairGrad's weights: damped Newton steps on G / ||G||_F (plus Nash-MTL's ridge, 1e-8 of each
    task's own squared length) until the squared Newton decrement is below 1e-24, at most
    ``max_iters`` (None: 100) steps, from ``start`` (the normalised problem's weights of a
    previous solve, as :func:`fairgrad_state` returns them; None: ones), then mapped back to G
    (times ||G||_F^(-alpha / (1 + alpha))). A zero gradient takes no part (weight 1, multiplying
    zero); the ridge gives exact conflicts a finite solution. ``solver="scipy"``: torchjd's
    ``FairGradWeighting(alpha, max_iters)`` (scipy's bounded least squares on the residual
    G w - w^(-1/alpha), from uniform weights; the authors' code), far slower (rows ``fairgrad``
    and ``fairgrad-scipy`` of ``scripts/bench_solvers.py``); the two agree where scipy's
    iterations converge.

    The paper's weights carry their own length (for equal agreeing gradients of norm n,
    w_i = (T n^2)^(-alpha / (1 + alpha))); with ``rescale`` (mtbench's scale) the combination is
    multiplied by s = 1^T G w / w^T G w, which makes it the projection of the baseline's sum
    onto FairGrad's direction (exactly the sum for equal agreeing gradients). ``rescale=False``:
    the paper's raw weights. A zero Gram matrix gives ones (the combination is zero anyway)."""
    return fairgrad_state(gram, alpha, max_iters, rescale, solver, start)[0]


def fairgrad_state(
    gram: Tensor,
    alpha: float = 1.0,
    max_iters: int | None = None,
    rescale: bool = True,
    solver: str = "newton",
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`fairgrad_weights_from_gram` and the normalised problem's solution (the next
    solve's ``start``; None for the scipy solver)."""
    from mtbench.combiners.jd import gram_np64, weighting

    _check_option(
        "fairgrad",
        "alpha",
        alpha,
        isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0,
        "a finite number > 0",
    )
    _check_option("fairgrad", "solver", solver, solver in FAIRGRAD_SOLVERS, "one of " + ", ".join(FAIRGRAD_SOLVERS))
    g = gram_np64(gram, "fairgrad")
    n_tasks = g.shape[0]
    if not float(g.diagonal().max()) > 0:
        return torch.ones(n_tasks, dtype=torch.float64), None
    state = None
    if solver == "scipy":
        jd = weighting("FairGradWeighting", "fairgrad", alpha=float(alpha), max_iters=max_iters)
        w = jd(torch.from_numpy(g)).to(torch.float64).numpy()
    else:
        power = 1.0 / float(alpha)
        x, live = _live_newton(g, start, 100 if max_iters is None else int(max_iters), power)
        state = torch.from_numpy(x)
        w = x * _frobenius(g) ** (-1.0 / (1.0 + power))
        w[~live] = 1.0
    return torch.from_numpy(w * _projection_scale(g, w) if rescale else w), state


def _live_newton(g: np.ndarray, start: Tensor | None, max_iter: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_fair_newton` on the tasks with a non-zero gradient (the others get 1, which
    multiplies zero), from ``start`` [T] where it has the right shape: the solution [T] and
    the mask of those tasks."""
    n_tasks = g.shape[0]
    live = g.diagonal() > 0
    whole = bool(live.all())
    x0 = None
    if start is not None and tuple(start.shape) == (n_tasks,):
        x0 = start.detach().to(device="cpu", dtype=torch.float64).numpy()
        x0 = x0 if whole else x0[live]
    x = np.ones(n_tasks)
    x[live] = _fair_newton(g if whole else g[np.ix_(live, live)], x0, max_iter, power)
    return x, live


def fairgrad(
    grads: Tensor, alpha: float = 1.0, max_iters: int | None = None, rescale: bool = True, solver: str = "newton"
) -> Tensor:
    """FairGrad of the rows of ``grads`` (see :func:`fairgrad_weights_from_gram` for the solvers
    and the scale)."""
    return _combine_rows(
        grads,
        "fairgrad",
        fairgrad_weights_from_gram,
        alpha=alpha,
        max_iters=max_iters,
        rescale=rescale,
        solver=solver,
    )


def config_weights_from_gram(gram: Tensor) -> Tensor:
    """ConFIG (Liu et al. 2024, eq. 2) from the Gram matrix, mtbench's own code (torchjd's
    ``ConFIG`` needs the gradients themselves).

    With unit gradients u_i = g_i / ||g_i|| (a zero g_i gives u_i = 0) and U their Gram matrix,
    the direction is v = sum_i a_i u_i, a = pinv(U) 1 (the least-norm x with u_i . x = 1 for
    all i, which is pinv([u_1 .. u_T]^T) 1), normalised to unit length; the length is
    sum_j g_j . v. The result, (sum_j g_j . v) v, is already on the baseline's scale (equal
    agreeing gradients give T g) and equals torchjd's ``ConFIG()``."""
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "config")
    n_tasks = g.shape[0]
    _, inv = _norms_and_inverses(g)
    units = g * inv[:, None] * inv[None, :]
    # pinv of the unit Gram matrix: eigenvalues below its rounding level (1000 T eps of the
    # largest) count as zero, i.e. singular values of the unit gradients below about 1e-6 T^0.5
    # of the largest (torch.linalg.pinv of the gradients themselves keeps them down to ~1e-15)
    # (well conditioned, as certified by its Cholesky factor: pinv(U) 1 = U^{-1} 1)
    a = well_conditioned_solve(units, np.ones(n_tasks))
    if a is None:
        evals, evecs = (x.numpy() for x in torch.linalg.eigh(torch.from_numpy(units)))
        cut = float(evals.max()) * 1000.0 * n_tasks * np.finfo(np.float64).eps
        keep = evals > max(cut, 1e-300)
        ones_in_range = evecs.sum(0) * keep  # the all-ones vector in the kept eigenbasis
        # no component of 1 in U's range beyond rounding (e.g. opposing rows of one rank):
        # pinv(U) 1 is then 0, and what the solve would give is rounding noise
        if not float(np.linalg.norm(ones_in_range)) > cut / max(float(evals.max()), 1e-300) * math.sqrt(n_tasks):
            return torch.zeros(n_tasks, dtype=torch.float64)
        inv_evals = np.zeros_like(evals)
        inv_evals[keep] = 1.0 / evals[keep]
        a = evecs @ (inv_evals * ones_in_range)
    coeff = a * inv  # v (before normalising) = sum_i coeff_i g_i
    norm2 = float(coeff @ g @ coeff)
    if not norm2 > 0:
        return torch.zeros(n_tasks, dtype=torch.float64)
    coeff = coeff / math.sqrt(norm2)
    return torch.from_numpy(float((g @ coeff).sum()) * coeff)


def config(grads: Tensor) -> Tensor:
    """ConFIG of the rows of ``grads`` [T, D] (see :func:`config_weights_from_gram`)."""
    return _combine_rows(grads, "config", config_weights_from_gram)


def gradvac_weights_from_gram(
    gram: Tensor,
    phi: Tensor | None = None,
    beta: float = 0.5,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """GradVac (Wang et al. 2021, Algorithm 1) from the Gram matrix: ``(weights, phi)``.

    For each task i, visiting the other tasks j in a fresh random order: phi_ij is the cosine
    of the current g_i' and the original g_j; if phi_ij < phi_hat_ij (the EMA target),
    g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2) + eps) g_j; then phi_hat_ij <- (1 - beta) phi_hat_ij + beta
    phi_ij. The output is sum_i g_i' (the baseline's sum when nothing conflicts), here as
    weights on the original g_k. ``phi`` is the [T, T] EMA (None: zeros); the updated one is
    returned. The same updates as torchjd's ``GradVacWeighting(beta, eps)``, as a compiled
    loop (:func:`mtbench.combiners.loops.gradvac_visits`, numba; the tasks' updates are
    independent, so it runs one task after another).

    Generator use: for T >= 2, T calls ``torch.randperm(T - 1, generator=generator)`` in task
    order, task i's permutation indexing its other tasks in increasing order (the draws of
    torchjd's GradVac from the global generator, in the same order).
    """
    from mtbench.combiners.jd import gram_np64

    gn = gram_np64(gram, "gradvac")
    n_tasks = gn.shape[0]
    _check_option("gradvac", "beta", beta, isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0, "a number in [0, 1]")
    phi_t = (
        torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
        if phi is None
        else phi.detach().to(device="cpu", dtype=torch.float64).clone()
    )
    if tuple(phi_t.shape) != (n_tasks, n_tasks):
        raise ValueError(f"gradvac: phi must be [T, T] = [{n_tasks}, {n_tasks}]; got {tuple(phi_t.shape)}")
    if n_tasks < 2:
        return torch.ones(n_tasks, dtype=torch.float64), phi_t
    from mtbench.combiners.loops import gradvac_visits

    order = _visit_orders(n_tasks, generator)  # [T, T-1]: task i's s-th visit
    coeff = np.eye(n_tasks)
    cg = gn.copy()  # row i: g_i' . g_k for every k (coeff @ G, kept up to date)
    gradvac_visits(gn, order, phi_t.numpy(), float(beta), float(eps), coeff, cg)  # compiled (numba), phi in place
    return torch.from_numpy(coeff.sum(axis=0)), phi_t


def gradvac(
    grads: Tensor,
    phi: Tensor | None = None,
    beta: float = 0.5,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """GradVac of the rows of ``grads`` (one step from the EMA ``phi``; see
    :func:`gradvac_weights_from_gram`); the updated EMA is not returned (use the weights
    function to carry it)."""
    return _combine_rows(grads, "gradvac", lambda gram: gradvac_weights_from_gram(gram, phi, beta, eps, generator)[0])


def gram_square_root(gram: Tensor) -> Tensor:
    """A [T, T] matrix M with M M^T = gram (float64, from its eigendecomposition, negative
    rounding eigenvalues set to 0): a stand-in for the gradients where a solver wants a matrix."""
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))
    return evecs * evals.clamp_min(0).sqrt()[None, :]


#: the ridge, relative to each task's squared norm, of Nash-MTL's Newton solve
NASH_RIDGE = 1e-8


def _fair_newton(g: np.ndarray, x0: np.ndarray | None, max_iter: int, power: float = 1.0) -> np.ndarray:
    """x > 0 with (Gn + ridge diag(Gn)) x = x^(-power), Gn = G / ||G||_F (no zero gradient in
    G), by damped Newton steps on the strictly convex 1/2 x^T Gn x - sum_i psi(x_i), psi' =
    x^(-power) (psi = log for power 1: Nash-MTL; FairGrad's power is 1 / alpha). Below
    ``_COMPILED_BELOW`` tasks compiled (:func:`mtbench.combiners.loops.fair_newton`, Newton's
    systems by Cholesky): at T = 40 a step is a few dozen tiny operations, whose calls cost
    more than their arithmetic. From there on (and should a Hessian not factorise) in NumPy,
    the large solves and products through :func:`_solve` and :func:`_matvec`."""
    n_tasks = g.shape[0]
    h = g / _frobenius(g)
    h = h + NASH_RIDGE * np.diag(h.diagonal())
    a = None if x0 is None else np.array(x0, dtype=np.float64)
    if a is None or a.shape != (n_tasks,) or not (a > 0).all() or not np.isfinite(a).all():
        a = np.ones(n_tasks)
    if n_tasks < _COMPILED_BELOW:  # the same iteration, compiled (NumPy's below if it fails)
        from mtbench.combiners.loops import fair_newton

        compiled = a.copy()
        if fair_newton(h, compiled, max_iter, float(power)):
            return compiled
    log = power == 1.0

    def phi(x: np.ndarray) -> float:
        barrier = np.log(x).sum() if log else np.power(x, 1.0 - power).sum() / (1.0 - power)
        return float(0.5 * (x @ _matvec(h, x)) - barrier)

    value = phi(a)
    for _ in range(max_iter):
        inv = 1.0 / a if log else np.power(a, -power)
        grad = _matvec(h, a) - inv
        curvature = 1.0 / (a * a) if log else power * inv / a  # -psi''(x) = power x^(-power - 1)
        hess = h.copy()
        hess[np.diag_indices(n_tasks)] += curvature
        step = _solve(hess, grad)
        decrement = float(grad @ step)  # the squared Newton decrement
        if not decrement > 1e-24:
            break
        t = 1.0
        ahead = step > 0
        if ahead.any():
            t = min(1.0, 0.99 * float((a[ahead] / step[ahead]).min()))
        while True:
            trial = a - t * step
            trial_value = phi(trial)
            if trial_value <= value - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        if not trial_value < value:
            break
        a, value = trial, trial_value
    return a


def nash_mtl_weights_from_gram(
    gram: Tensor, alpha0: Tensor | None = None, max_norm: float = 0.0, rescale: bool = True, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Nash-MTL (Navon et al. 2022, eq. 4 and Algorithm 1) from the Gram matrix, mtbench's own
    solver: ``(weights, alpha)``.

    The paper's weights alpha > 0 solve G alpha = 1 / alpha (every task's share
    g_i . d = 1 / alpha_i of d = sum_i alpha_i g_i, so ||d||^2 = T). They minimise the strictly
    convex phi(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i (its gradient is
    G alpha - 1/alpha): damped Newton steps (backtracking, alpha > 0) on G / ||G||_F plus
    1e-8 times its diagonal (``NASH_RIDGE``, relative to each task's own length), from ``alpha0`` (the last step's, as the authors warm-start;
    None: ones) until the squared Newton decrement is below 1e-24, then mapped back to G
    (alpha / sqrt(||G||_F)). A zero gradient takes no part (weight 1, multiplying zero). The
    ridge makes a solution exist where none does (gradients with a non-negative combination
    equal to zero, e.g. exact conflicts): alpha then grows only along
    that combination, which adds nothing to d. ``alpha0`` and the returned ``alpha`` are the
    normalised problem's (the state to warm-start from).

    The authors' code (and torchjd's ``NashMTL``) approximates the same alpha by up to 20
    cvxpy/ECOS convex-concave steps, stopping when ||Gn alpha - 1/alpha|| < 1e-3; here it is
    solved to rounding, far faster (rows ``nash_mtl`` and ``nash_mtl-torchjd`` of
    ``scripts/bench_solvers.py``).

    Scale: ``rescale`` (mtbench's) multiplies d by 1^T G alpha / alpha^T G alpha, making it the
    projection of the baseline's sum onto Nash-MTL's direction (T g for T equal gradients g);
    ``rescale=False``: the paper's alpha. ``max_norm > 0``: d is then scaled down to that norm
    when longer (the authors' code: 1.0, on the paper's d).
    """
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "nash_mtl")
    n_tasks = g.shape[0]
    fro = _frobenius(g)
    if not fro > 0:
        return torch.ones(n_tasks, dtype=torch.float64), torch.ones(n_tasks, dtype=torch.float64)
    alpha, live = _live_newton(g, alpha0, max_iter, 1.0)
    w = alpha / math.sqrt(fro)
    w[~live] = 1.0
    if rescale:
        w = w * _projection_scale(g, w)
    if max_norm > 0:
        norm = math.sqrt(max(float(w @ g @ w), 0.0))
        if norm > max_norm:
            w = w * (max_norm / norm)
    return torch.from_numpy(w), torch.from_numpy(alpha)


def nash_mtl(grads: Tensor, max_norm: float = 0.0, rescale: bool = True) -> Tensor:
    """Nash-MTL of the rows of ``grads`` (see :func:`nash_mtl_weights_from_gram`)."""
    return _combine_rows(grads, "nash_mtl", lambda gram: nash_mtl_weights_from_gram(gram, None, max_norm, rescale)[0])

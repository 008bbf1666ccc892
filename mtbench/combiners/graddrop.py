"""Gradient Sign Dropout (GradDrop) at the shared representation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor

from mtbench.combiners import distributed
from mtbench.combiners.base import Combiner, Step, one_of, positive
from mtbench.combiners.rows import (
    _check_grads,
)
from mtbench.combiners.taskgrads import backward_replacing_rep_grad, rep_task_grads
from mtbench.errors import MtbenchError
from mtbench.options import Option, boolean, number

#: allowed values of ``graddrop(f=...)``
GRADDROP_F = ("identity", "linear", "sigmoid")

LeakLike = Union[None, float, Sequence[float], Tensor]  # noqa: UP007 - a runtime alias, kept for Python 3.10


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
    group: Any = None,
    stats: dict | None = None,
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
        signed = distributed.all_reduce_sum((grads * sign.unsqueeze(0)).sum(dim=1), group)  # batch sums
    else:
        signed = grads

    weight = _keep_weights(signed, transfer, leak_values, eps, generator, group if activation is None else None, stats)
    if activation is not None:
        weight = weight.unsqueeze(1)  # broadcast the per-feature mask over the batch
    out = (weight * grads).sum(dim=0)
    return _rescaled(out, grads.sum(dim=0), group) if renormalize else out


def _keep_weights(
    signed: Tensor,
    transfer,
    leak_values: Tensor | None,
    eps: float,
    generator: torch.Generator | None,
    rows_of: Any = None,
    stats: dict | None = None,
) -> Tensor:
    """GradDrop's steps 2-5 on the signed gradients G [T, *P]: the purity P, ONE uniform draw of
    P's shape, the masks M_i, and the weights l_i + (1 - l_i) M_i [T, *P] (M_i without a leak).
    ``rows_of``: the process group whose global batch P's first dimension slices (the draw of
    the global shape, this rank's rows: :func:`distributed.rand_rows`). ``stats`` (a dict)
    receives ``kept`` (the entries with M_i = 1) and ``signed`` (those with G_i != 0), 0-d
    tensors."""
    # Gradient Positive Sign Purity, one value per (feature) position.
    purity = 0.5 * (1.0 + signed.sum(dim=0) / (signed.abs().sum(dim=0) + eps))
    # exactly one uniform draw per position (so shared by the whole batch in batch mode)
    uniform = distributed.rand_rows(tuple(purity.shape), generator, rows_of, device=signed.device, dtype=signed.dtype)
    keep_positive_prob = transfer(purity)
    keep = ((keep_positive_prob > uniform) & (signed > 0)) | ((keep_positive_prob < uniform) & (signed < 0))
    weight = keep.to(signed.dtype)  # M_i, shape [T, *P.shape]
    if stats is not None:
        stats["kept"], stats["signed"] = keep.sum(), (signed != 0).sum()
    if leak_values is not None:
        shape = (signed.shape[0],) + (1,) * (weight.dim() - 1)
        lk = leak_values.to(device=signed.device, dtype=signed.dtype).reshape(shape)
        weight = lk + (1.0 - lk) * weight
    return weight


def _rescaled(out: Tensor, target: Tensor, group: Any = None) -> Tensor:
    """``out`` rescaled to the L2 norm of ``target`` (an all-zero ``out`` unchanged); the
    factor is computed from detached values (a weight, like the masks). Under a process group
    both are this rank's rows of the global batch's: the squared norms are summed."""
    if group is None:
        norm, goal = out.detach().norm(), target.detach().norm()
    else:
        sq = torch.stack([out.detach().pow(2).sum(), target.detach().pow(2).sum()])
        norm, goal = distributed.all_reduce_sum(sq, group).sqrt().unbind()
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
    process_group: Any = None,
    stats: dict | None = None,
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
        process_group: under DistributedDataParallel, the group whose ranks hold the other
            equal slices of the batch: ``grads`` are this rank's rows (batch first) of the
            global batch's per-task gradients; the batch sums ``G_i`` and the norms of
            ``renormalize`` are summed over the group and the per-element draws are the global
            batch's rows of this rank (one process's result on the whole batch, sliced).
            None: one process.
        stats: a dict that receives the masks' counts as 0-d tensors: ``kept`` (the entries
            with ``M_i = 1``) and ``signed`` (those with ``G_i != 0``); their ratio is the kept
            fraction (``trainer.diagnostics``). None: not counted.

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
    return _graddrop_core(
        grads, activation, leak, graddrop_transfer(f, k), generator, eps, renormalize, "graddrop", process_group, stats
    )


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
    process_group: Any = None,
    stats: dict | None = None,
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
        signed = weight * distributed.all_reduce_sum(e.T @ sign, process_group)  # [T, D]: G_i = sum_b sign(A_b) g_i[b]
        out = e @ (_keep_weights(signed, transfer, leak_values, eps, generator, None, stats) * weight)
    else:
        lk = None if leak_values is None else leak_values.to(device=e.device, dtype=e.dtype)
        e_pos, e_neg = e.clamp(min=0), e.clamp(max=0)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        purity = 0.5 * (1.0 + total / ((e.abs() @ weight.abs()) + eps))
        uniform = distributed.rand_rows(tuple(purity.shape), generator, process_group, device=e.device, dtype=e.dtype)
        p = transfer(purity)
        if lk is not None:  # (1 - l_i) into the tasks' columns, l_i g_i passes untouched
            drop = 1.0 - lk
            e_pos, e_neg = e_pos * drop, e_neg * drop
        pos = e_pos @ w_pos + e_neg @ w_neg  # sum of the positive parts g_i > 0
        neg = e_pos @ w_neg + e_neg @ w_pos  # ... and of the negative parts
        zero = torch.zeros_like(pos)
        out = torch.where(p > uniform, pos, zero) + torch.where(p < uniform, neg, zero)
        if stats is not None:  # per element, the tasks whose g_i > 0 (< 0): products of sign counts
            ep, en, wp, wn = ((t > 0).to(e.dtype) for t in (e, -e, weight, -weight))
            n_pos, n_neg = ep @ wp + en @ wn, ep @ wn + en @ wp
            stats["kept"] = torch.where(p > uniform, n_pos, zero).sum() + torch.where(p < uniform, n_neg, zero).sum()
            stats["signed"] = (n_pos + n_neg).sum()
        if lk is not None:
            out = out + (e * lk) @ weight
    return _rescaled(out, total, process_group) if renormalize else out


def random_graddrop(
    grads: Tensor,
    activation: Tensor | None = None,
    leak: LeakLike = None,
    generator: torch.Generator | None = None,
    *,
    eps: float = 1e-7,
    renormalize: bool = False,
    process_group: Any = None,
    stats: dict | None = None,
) -> Tensor:
    """Random-sign control for GradDrop (Chen et al., NeurIPS 2020): ``f(P) := 1/2``.

    Exactly :func:`graddrop` with ``f(P)`` replaced by the constant 1/2: at every
    position (every feature in batch-separated mode) the positive-signed tasks are
    kept with probability 1/2 and the negative-signed ones otherwise, whatever the
    gradients. The signed gradients ``G_i`` (and so the grouping of tasks into
    positive/negative) are computed as in :func:`graddrop`, the generator is consumed
    identically (one ``torch.rand`` of ``P``'s shape), and ``leak``, ``eps`` and
    ``renormalize`` and ``stats`` mean the same.

    Returns:
        The combined gradient, shape ``grads.shape[1:]``.
    """

    return _graddrop_core(
        grads,
        activation,
        leak,
        graddrop_transfer("random"),
        generator,
        eps,
        renormalize,
        "random_graddrop",
        process_group,
        stats,
    )


class GradDrop(Combiner):
    """GradDrop (Chen et al. 2020, "Just Pick a Sign", Algorithm 1) at the representation A.

    Forward: the identity. Backward: from the T per-task gradients dL_i/dA ([T, B, *F],
    :func:`taskgrads.rep_task_grads`: through the stock linear heads by the chain rule, else
    one batched autograd call; with linear heads and per-column losses never stacked,
    :func:`functional.graddrop_factored`), keep at each feature either the positive-signed or the
    negative-signed tasks with probability f(P), P the sign purity
    1/2 (1 + sum_i G_i / (sum_i |G_i| + eps)); see :func:`functional.graddrop` for the
    exact rule. The combined gradient flows into the trunk; each head gets its own loss's
    plain gradient. With every mask 1 this is exactly the baseline's gradient. A null leak
    is the task's default leak (filled in by ``build_combiner``), 0 without one.
    """

    name = "graddrop"
    ddp = "the batch sums G_i [T, F] of the batch-separated rule (per element: nothing); renormalize: two squared norms"
    style = ("#d62728", "*")
    options = {
        "leak": Option(
            None,
            "l_i in [0, 1], one number or one per task: task i's gradient passes with weight l_i + (1 - l_i) M_i (1: untouched);"
            " null: the task's default leak, 0 unless the task sets one",
            lambda key, value, owner: check_leak(0.0 if value is None else value, owner.num_tasks, owner.name),
        ),
        "f": Option("identity", "the map of the purity P: identity | linear | sigmoid", one_of(*GRADDROP_F)),
        "k": Option(1.0, "slope of f (linear, sigmoid)", number(minimum=0, min_open=True)),
        "batch_separated": Option(
            True,
            "G_i summed over the batch with sign(A): one mask per feature for the whole batch (the paper's Sec. 3.2); false: per element",
            boolean(),
        ),
        "renormalize": Option(
            False, "rescale the output to the L2 norm of the plain sum of the task gradients at A", boolean()
        ),
        "eps": Option(1e-7, "added to the purity's denominator (0/0 gives P = 1/2)", positive()),
    }

    def representation_use(self) -> str | None:
        return "a model with one shared representation (e.g. model=segnet): GradDrop acts there only"

    def rule(self) -> dict[str, Any]:
        """The purity map's arguments (``f``, ``k``) of the functional GradDrop; RandomGradDrop:
        ``f="random"``."""
        return {"f": self.f, "k": self.k}

    def drop_options(self, step: Step) -> dict[str, Any]:
        """The functional GradDrop's other arguments, the same for every form of the gradients
        (with ``diagnostics``: ``stats``, the masks' counts of the step)."""
        options = {
            "leak": self.leak,
            "generator": step.generator,
            "eps": self.eps,
            "renormalize": bool(self.renormalize),
            "process_group": step.group,
        }
        if self.diagnostics:
            self._stats: dict[str, Tensor] = {}
            options["stats"] = self._stats
        return options

    def computes_gram(self) -> bool:
        """True: the per-task gradients at the representation are in hand (their Gram matrix is
        kept with ``diagnostics``)."""
        return True

    def diagnostic_values(self) -> dict[str, Tensor]:
        """``graddrop_kept``: the share of the (task, feature) entries with a non-zero signed
        gradient whose mask M_i is 1 at the last step."""
        stats = getattr(self, "_stats", None) or {}
        if "kept" not in stats:
            return {}
        return {"graddrop_kept": stats["kept"].double() / stats["signed"].double().clamp_min(1)}

    def drop(self, grads, activation, step: Step):
        return graddrop(grads, activation, **self.rule(), **self.drop_options(step))

    def drop_factored(self, e, weight, activation, step: Step):
        """:meth:`drop` of the gradients ``g_i[b] = e[b, i] weight_i`` (never stacked)."""
        return graddrop_factored(e, weight, activation, **self.rule(), **self.drop_options(step))

    def backward(self, step: Step) -> None:
        if backward_replacing_rep_grad(step, lambda rep_grads: self._drop_columns(rep_grads, step)):
            return  # linear heads, per-column losses: one backward pass, two products, no [T, B, D] stack
        rep_grads = rep_task_grads(step)
        if self.diagnostics:
            self.diagnostics_gram = rep_grads.gram()
        activation = step.rep.detach() if self.batch_separated else None
        combined = self.drop(rep_grads.full(), activation, step)
        self.backward_heads(step, rep_grads=rep_grads)
        self.backward_trunk(step, combined)

    def _drop_columns(self, rep_grads, step: Step):
        """:meth:`drop_factored` of gradients held as ``e[b, i] W_i``, shape [B, D]."""
        flat = step.rep.detach().reshape(step.rep.shape[0], -1)
        if self.diagnostics:
            self.diagnostics_gram = rep_grads.gram()
        return self.drop_factored(*rep_grads.column_factors(), flat if self.batch_separated else None, step)


def check_leak(leak: Any, num_tasks: int, combiner: str) -> float | list[float]:
    """One number or one per task, each in [0, 1]; else a one-line error naming the option."""
    values = list(leak) if isinstance(leak, (list, tuple)) else [leak]
    if isinstance(leak, (list, tuple)) and len(values) != num_tasks:
        raise MtbenchError(
            f"combiner.leak has {len(values)} values but the task has {num_tasks} tasks; give one number or one per task"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise MtbenchError(f"combiner.leak values must be numbers in [0, 1] for combiner={combiner} (got {v!r})")
    return [float(v) for v in values] if isinstance(leak, (list, tuple)) else float(leak)

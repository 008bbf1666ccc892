"""What the combiners communicate under DistributedDataParallel (``Step.group`` set).

N ranks each hold an equal slice of the global batch, with per-task losses whose mean over the
ranks is the global loss. A combiner's ``backward`` then leaves on every rank the gradient one
process computes on the global batch, up to reduction order (per combiner, with its traffic:
docs/reference/ddp-communication.md):

* :func:`ddp_backward` wraps every ``backward``: it all-reduces the T losses once and replaces
  them by :func:`global_losses`, whose value is the global loss and whose gradient is the rank's
  share of the global gradient (local losses / N), so loss statistics (MGDA's scale, UW, DWA,
  FAMO, GradNorm's ratios) are global and each local gradient is this rank's term of a sum.
  Afterwards every trainable gradient not yet summed is all-reduced once, in one flat buffer.
* A combiner not linear in the per-example terms sums what it needs inside its ``backward``
  (:func:`all_reduce_sum`): the Gram matrix (T x T), GradDrop's batch sums (T x F), the shared
  parameters' per-task gradients (T x P) at ``level: params``, GradNorm's per-task gradients
  of its layer, Clip's norm after :func:`sum_grads`.
* Random draws come from generators seeded alike on every rank; a per-example draw draws the
  global batch's shape and keeps the rank's rows (:func:`rand_rows`).

:func:`check_ddp` refuses, before a run starts, a combiner that declares no communication
(``Combiner.ddp``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtbench.errors import MtbenchError

__all__ = [
    "Traffic",
    "all_reduce_sum",
    "check_ddp",
    "combine_summed_param_grads",
    "ddp_backward",
    "global_losses",
    "mark_summed",
    "rand_rows",
    "sum_grads",
    "world_size",
]

_state = threading.local()


def world_size(group: Any) -> int:
    """The number of ranks of ``group`` (1 for None)."""
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_sum(tensor: Tensor, group: Any) -> Tensor:
    """``tensor`` summed over the ranks of ``group`` (a new tensor; ``tensor`` itself when the
    group is None). Every rank gets the same numbers."""
    if group is None:
        return tensor
    out = tensor.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    _count(out)
    return out


def global_losses(losses: Tensor, group: Any) -> Tensor:
    """The global batch's losses ``mean_r L^r`` (one all-reduce of T numbers) as a tensor whose
    gradient is the rank's share, ``L^r / N``: a backward pass from it gives this rank's term
    of the global gradient, and the terms sum to it over the ranks."""
    n = world_size(group)
    if n == 1:
        return losses
    mean = all_reduce_sum(losses.detach(), group) / n
    local = losses / n
    return local + (mean - local.detach())


def rand_rows(shape: tuple[int, ...], generator: Any, group: Any, **kw: Any) -> Tensor:
    """``torch.rand(shape)`` for this rank's rows of a global batch: the draw of the global
    shape (``shape[0] * N`` rows, as one process draws it), of which the rank keeps its slice."""
    n = world_size(group)
    if n == 1:
        return torch.rand(shape, generator=generator, **kw)
    rows = shape[0]
    full = torch.rand((rows * n, *shape[1:]), generator=generator, **kw)
    r = dist.get_rank(group)
    return full[r * rows : (r + 1) * rows]


def sum_grads(params: Iterable[Tensor], group: Any) -> None:
    """Sum the ``.grad`` of ``params`` over the ranks (in one flat buffer per dtype) and mark
    them summed, so the end of the step does not sum them again. Parameters without a gradient
    are left out (on every rank alike: the ranks run the same graph). Inside a combiner's step,
    the gradients accumulated in ``.grad`` before it (set aside while it runs) are added back to
    the summed ones here."""
    if group is None:
        return
    done = getattr(_state, "summed", None)
    todo = [p for p in params if p.grad is not None and (done is None or id(p) not in done)]
    by_dtype: dict[tuple, list[Tensor]] = {}
    for p in todo:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for ps in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        _count(flat)
        offset = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
    if done is not None:
        done.update(id(p) for p in todo)
    held = getattr(_state, "held", None)
    for p in todo if held else ():  # the gradients accumulated before the step, back now (Clip clips their sum)
        if id(p) in held:
            p.grad = held.pop(id(p))[1].add_(p.grad)


def mark_summed(params: Iterable[Tensor]) -> None:
    """The ``.grad`` of ``params`` already holds the global gradient (computed from summed
    quantities): the end of the step leaves it alone."""
    done = getattr(_state, "summed", None)
    if done is not None:
        done.update(id(p) for p in params)


def inside() -> bool:
    """True while a combiner's ``backward`` runs under :func:`ddp_backward`'s scheme (a piece's
    ``backward`` called from a composed combiner's then runs as is)."""
    return getattr(_state, "summed", None) is not None


def ddp_backward(fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``Combiner.backward`` under a process group: :func:`check_ddp`, the step with
    :func:`global_losses`, ``fn``, then every trainable gradient not yet summed summed once
    (:func:`sum_grads`). Without a group (or inside another combiner's step): ``fn`` as is."""

    @functools.wraps(fn)
    def backward(self: Any, step: Any) -> None:
        group = getattr(step, "group", None)
        if group is None or inside():
            return fn(self, step)
        check_ddp(self)
        gstep = dataclasses.replace(step, losses=global_losses(step.losses, group))
        params = [p for p in step.model.parameters() if p.requires_grad]
        # gradients accumulated before this step (gradient accumulation) are already global:
        # set aside, so that only this step's are summed, and added back after
        held = {id(p): (p, p.grad) for p in params if p.grad is not None}
        for p, _ in held.values():
            p.grad = None
        _state.summed, _state.held = set(), held
        try:
            fn(self, gstep)
            sum_grads(params, group)
        finally:
            _state.summed = _state.held = None
            for p, g in held.values():
                p.grad = g if p.grad is None else g.add_(p.grad)

    return backward


def check_ddp(combiner: Any) -> None:
    """A one-line error when ``combiner`` cannot run exactly under several processes (its
    ``backward`` declares no communication, ``Combiner.ddp``); nothing otherwise."""
    why = combiner.ddp_refusal()
    if why:
        raise MtbenchError(f"combiner={combiner.name} cannot run with trainer.strategy=ddp: {why}")


# -- traffic count (the benchmark reads it) ----------------------------------------------------


class Traffic:
    """Counts the collectives and the numbers they carry while active (``with Traffic() as t``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.numbers = 0
        self.bytes = 0

    def __enter__(self) -> Traffic:
        _state.traffic = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.traffic = None


def _count(t: Tensor) -> None:
    traffic = getattr(_state, "traffic", None)
    if traffic is not None:
        traffic.calls += 1
        traffic.numbers += t.numel()
        traffic.bytes += t.numel() * t.element_size()


# -- the per-task gradients of the shared parameters (level: params) ---------------------------


def combine_summed_param_grads(
    step: Any, rep_grads: Any, weights_of: Callable[[Tensor, Any], Tensor], chunk: Any
) -> Tensor:
    """``level: params`` under a process group: this rank's T per-task gradients of the shared
    parameters ([T, P], one backward pass per task), summed over the ranks (T x P numbers: T
    times DDP's traffic), their float64 Gram matrix, the weights ``weights_of(gram, step)``, and
    the combination into ``.grad`` (marked summed). Returns the weights. The factored layers and
    the memory budget of one process are not used: their Gram entries are not sums over ranks."""
    from mtbench.combiners.linalg import add_flat_grads, combine, gram64
    from mtbench.combiners.taskgrads import default_chunk, param_grad_stack, shared_parameters

    params = shared_parameters(step.model)
    stack = param_grad_stack(step, rep_grads.full(), params, default_chunk(chunk, step.rep.device))
    stack = all_reduce_sum(stack, step.group)
    weights = weights_of(gram64(stack), step)
    flat = combine(weights.detach().to(torch.float64), stack)
    add_flat_grads(params, flat)
    mark_summed(params)
    return weights

"""Combiners that keep statistics per shared parameter and task (DB-MTL's gradient buffer,
Excess-MTL's accumulated squared gradients): they need every task's gradient of every shared
parameter as an explicit row, not only the rows' Gram matrix."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtbench.combiners.base import Combiner, Step
from mtbench.combiners.distributed import all_reduce_sum, mark_summed
from mtbench.combiners.linalg import add_flat_grads
from mtbench.combiners.taskgrads import default_chunk, param_grad_stack, rep_task_grads, shared_parameters
from mtbench.options import Option, integer


class ParamRows(Combiner):
    """The per-task gradients of all shared parameters as a [T, P] stack ``rows`` (T backward
    passes through the trunk, ``chunk_size`` at a time), then the subclass's :meth:`combine`
    of them (the shared gradient, flattened) goes into the shared parameters' ``.grad``.

    Each head gets its own loss's gradient times :meth:`head_scale` (1 unless the method
    differentiates another function of the loss). Such a method is defined at the shared
    parameters only: its statistics are per parameter, and at the representation the
    coordinates would be other examples at every step.

    Under several processes the rows are summed over the ranks (T times DDP's traffic), so the
    statistics and the combination are the single process's, the same on every rank.
    """

    ddp = "the T per-task gradients of the shared parameters (T x P numbers), then the heads' gradients summed once"

    options: ClassVar[dict[str, Option]] = {
        "chunk_size": Option(
            None,
            "tasks per batched backward pass; null: 1 on a CPU (a plain loop, faster there), 8 on a GPU",
            integer(minimum=1, optional=True),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the weights of the last step (their range is logged per epoch)
        self.last_weights: Tensor | None = None

    def head_scale(self, losses: Tensor) -> Tensor | None:
        """The factor [T] of each task's loss gradient (the task's rows and its head); None: 1."""
        return None

    def combine(self, rows: Tensor, step: Step) -> Tensor:
        """The shared gradient [P] from the rows [T, P] (which it may keep or change)."""
        raise NotImplementedError

    def backward(self, step: Step) -> None:
        scale = self.head_scale(step.losses.detach())
        rep_grads = rep_task_grads(step)
        self.backward_heads(step, weights=scale, rep_grads=rep_grads)
        params = shared_parameters(step.model)
        u = rep_grads.full()
        if scale is not None:
            u = u * scale.to(u.dtype).reshape((-1,) + (1,) * (u.dim() - 1))
        rows = param_grad_stack(step, u, params, default_chunk(self.chunk_size, step.rep.device))
        rows = all_reduce_sum(rows, step.group)
        flat = self.combine(rows, step)
        add_flat_grads(params, flat)
        mark_summed(params)

    def log_values(self) -> dict[str, float]:
        if self.last_weights is None:
            return {}
        w = self.last_weights.detach()
        return {"w_min": float(w.min()), "w_max": float(w.max())}


def tensor_or_none(value: Any, like: Tensor | None = None) -> Tensor | None:
    """A checkpointed tensor (or None) as a fresh tensor."""
    if value is None:
        return None
    return torch.as_tensor(value).clone()

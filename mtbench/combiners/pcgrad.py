"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

from typing import Any

from mtbench.combiners.base import Combiner, Step, check_choice
from mtbench.combiners.functional import pcgrad


class PCGrad(Combiner):
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task i, visiting the other tasks in a fresh random order, if the current g_i
    conflicts with the ORIGINAL g_j (g_i . g_j < 0) it is projected onto the normal plane
    of g_j; the projected gradients are SUMMED (the baseline's scale; some ports average).
    Only the shared gradients are projected: each head gets its own loss's gradient (a
    head's parameters receive no other task's gradient, so projecting them would only
    leak other heads' gradients into it).

    Options:
      level (params): params = per-task gradients of all shared parameters, as in the
        paper (T backward passes through the trunk, ``chunk_size`` at a time);
        representation = per-task gradients at the shared representation, flattened over
        batch and features, then one backward through the trunk.
      chunk_size (null): tasks per batched backward pass at the params level; null =
        1 on a CPU (a plain loop, faster there), 8 on a GPU.
    """

    name = "pcgrad"
    defaults: dict[str, Any] = {"level": "params", "chunk_size": None}

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        check_choice("level", self.level, ("params", "representation"), self.name)
        if self.chunk_size is not None:
            self.chunk_size = int(self.check_positive("chunk_size", self.chunk_size))

    def backward(self, step: Step) -> None:
        rep_grads = self.task_grads_at(step.losses, step.rep)
        self.backward_heads(step)
        if self.level == "representation":
            combined = pcgrad(rep_grads.flatten(1), generator=step.cpu_generator)
            self.backward_trunk(step, combined.view_as(step.rep))
        else:
            params = step.model.shared_parameters()
            flat = self.task_grads_at_params(step, rep_grads, params, self.default_chunk(self.chunk_size, step.rep.device))
            self.add_flat_grad(params, pcgrad(flat, generator=step.cpu_generator))

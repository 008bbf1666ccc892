"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

from typing import Any

from mtbench.combiners.base import Combiner, Step, check_choice
from mtbench.options import check_int
from mtbench.combiners.functional import pcgrad_weights_from_gram


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
      memory_budget_mb (null): at the params level, memory for the rows of the per-task
        gradient stack held at once (null: all T rows); fewer rows than tasks builds the
        Gram matrix block by block with more backward passes (same result).

    Implementation (same projections, same random orders as :func:`functional.pcgrad`): the
    projections run on the T x T float64 Gram matrix of the g_i, which gives the summed
    output as a combination sum_k c_k g_k (:func:`functional.pcgrad_weights_from_gram`);
    the per-task gradients come from :meth:`Combiner.rep_task_grads` and
    :meth:`Combiner.param_task_grads`.
    """

    name = "pcgrad"
    defaults: dict[str, Any] = {"level": "params", "chunk_size": None, "memory_budget_mb": None}

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        check_choice("level", self.level, ("params", "representation"), self.name)
        self.chunk_size = check_int("combiner.chunk_size", self.chunk_size, minimum=1, optional=True)
        if self.memory_budget_mb is not None:
            self.memory_budget_mb = self.check_positive("memory_budget_mb", self.memory_budget_mb)

    def prepare(self, model) -> None:
        if self.level == "params":  # arm the factored layers' hooks before the first step
            self.factored_candidates(model)

    def backward(self, step: Step) -> None:
        rep_grads = self.rep_task_grads(step)
        self.backward_heads(step)
        if self.level == "representation":
            weights = pcgrad_weights_from_gram(rep_grads.gram(), generator=step.cpu_generator)
            self.backward_trunk(step, rep_grads.combine(weights))
        else:
            per_task = self.param_task_grads(step, rep_grads, self.chunk_size, self.memory_budget_mb)
            weights = pcgrad_weights_from_gram(per_task.gram(), generator=step.cpu_generator)
            per_task.add_combination(weights)

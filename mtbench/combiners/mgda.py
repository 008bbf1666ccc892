"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Combiner, Step, check_choice
from mtbench.options import check_bool, check_int
from mtbench.combiners.functional import _gram64, mgda_weights_from_gram

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(Combiner):
    """MGDA (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization").

    Weights w on the simplex minimising || sum_i w_i g_i / n_i ||^2 (Sec. 3.1, eq. 3),
    n_i the normaliser of ``normalization`` as in the authors' code: none (1), l2
    (||g_i||), loss (L_i), loss+ (L_i ||g_i||). Solved exactly for two tasks and to a
    relative duality gap of 1e-10 for more (:func:`functional.mgda_weights_from_gram`).
    The weights then multiply the raw losses, as in the original code: the shared
    parameters get T * sum_i w_i dL_i/dtheta (``rescale: true``, the baseline's scale; the
    convex combination without the factor T is a T-times smaller step) and each head gets
    its own loss's gradient.

    Options:
      level (representation): representation = MGDA-UB (Sec. 3.3): the g_i are the
        gradients at the shared representation, flattened over batch and features;
        params = gradients of all shared parameters (T backward passes, ``chunk_size``
        at a time).
      normalization (none): none | l2 | loss | loss+.
      rescale (true): multiply the shared gradient by T.
      chunk_size (null): tasks per batched backward pass at the params level; null =
        1 on a CPU (a plain loop, faster there), 8 on a GPU.
      memory_budget_mb (null): at the params level, memory for the rows of the per-task
        gradient stack held at once (null: all T rows); fewer rows than tasks builds the
        Gram matrix block by block with more backward passes (same result).

    Implementation: only the float64 Gram matrix of the g_i enters the solver, and the
    shared gradient is the combination sum_i (scale w_i) g_i, so the per-task gradients are
    taken through :meth:`Combiner.rep_task_grads` / :meth:`Combiner.param_task_grads`, which
    give both without more work than the math needs.
    """

    name = "mgda"
    defaults: dict[str, Any] = {
        "level": "representation",
        "normalization": "none",
        "rescale": True,
        "chunk_size": None,
        "memory_budget_mb": None,
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        check_choice("level", self.level, ("representation", "params"), self.name)
        check_choice("normalization", self.normalization, NORMALIZATIONS, self.name)
        self.chunk_size = check_int("combiner.chunk_size", self.chunk_size, minimum=1, optional=True)
        check_bool("combiner.rescale", self.rescale)
        if self.memory_budget_mb is not None:
            self.memory_budget_mb = self.check_positive("memory_budget_mb", self.memory_budget_mb)
        self.last_weights: torch.Tensor | None = None

    def weights(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Simplex weights from flat per-task gradients [T, D] and the losses [T]."""
        return self.weights_from_gram(_gram64(grads.detach()), losses).to(grads.dtype)

    def weights_from_gram(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Simplex weights (float64) from the Gram matrix of the per-task gradients and the losses."""
        gram = gram.detach().to(device="cpu", dtype=torch.float64)
        norms = gram.diagonal().clamp_min(0).sqrt()
        loss = losses.detach().to(device="cpu", dtype=torch.float64)
        n = {
            "none": torch.ones_like(norms),
            "l2": norms,
            "loss": loss,
            "loss+": loss * norms,
        }[self.normalization]
        n = torch.where(n > 0, n, torch.ones_like(n))  # a zero gradient or loss stays as it is
        # as in the authors' code: the weights found for the normalised g_i / n_i multiply
        # the raw losses (they are not divided by n_i again)
        w = mgda_weights_from_gram(gram / (n[:, None] * n[None, :]))
        self.last_weights = w
        return w

    def prepare(self, model) -> None:
        if self.level == "params":  # arm the factored layers' hooks before the first step
            self.factored_candidates(model)

    def backward(self, step: Step) -> None:
        scale = self.num_tasks if self.rescale else 1.0
        rep_grads = self.rep_task_grads(step)
        self.backward_heads(step)
        if self.level == "representation":
            w = self.weights_from_gram(rep_grads.gram(), step.losses).to(rep_grads.dtype)
            self.backward_trunk(step, rep_grads.combine(w * scale))
        else:
            per_task = self.param_task_grads(step, rep_grads, self.chunk_size, self.memory_budget_mb)
            w = self.weights_from_gram(per_task.gram(), step.losses).to(rep_grads.dtype)
            per_task.add_combination(w * scale)

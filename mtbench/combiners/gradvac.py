"""GradVac: pairwise gradient cosines pulled up to their running averages."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import gradvac_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.options import Option, number


class GradVac(GramWeighted):
    """GradVac (Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", Algorithm 1).

    For each task i, visiting the other tasks in a fresh random order, the cosine phi_ij of
    the current g_i' with the original g_j is raised to its EMA target phi_hat_ij by adding a
    multiple of g_j when below it; phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij. The
    modified gradients are summed. The EMA [T, T] is the combiner's state (saved in
    checkpoints); the visiting orders come from the step's host generator.

    mtbench's own code (:func:`functional.gradvac_weights_from_gram`: the T - 1 visits
    vectorised over tasks, and randomness from mtbench's generator; torchjd's
    ``GradVacWeighting`` loops over every pair and draws from torch's global generator) makes
    the same updates, checked against torchjd. Scale: the sum, as in the paper and torchjd
    (factor 1). Options: those of :class:`GramWeighted` (``level`` defaulting to
    ``representation``), ``beta`` in [0, 1], ``eps`` >= 0.
    """

    name = "gradvac"
    style = ("#dbdb8d", "1")
    options = {
        **GramWeighted.level_default("representation"),
        "beta": Option(
            0.5, "EMA rate of the target cosines, in [0, 1] (torchjd's default 0.5)", number(minimum=0, maximum=1)
        ),
        "eps": Option(1e-8, "added to the denominators (>= 0)", number(minimum=0)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.phi: torch.Tensor | None = None

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.phi = gradvac_weights_from_gram(
            gram, self.phi, beta=self.beta, eps=self.eps, generator=step.cpu_generator
        )
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"phi": None if self.phi is None else self.phi.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phi = state.get("phi")
        self.phi = None if phi is None else torch.as_tensor(phi, dtype=torch.float64).clone()

    def log_values(self) -> dict[str, float]:
        if self.phi is None or self.num_tasks < 2:
            return {}
        off = ~torch.eye(self.num_tasks, dtype=torch.bool)
        return {"gradvac_mean_target": float(self.phi[off].mean())}

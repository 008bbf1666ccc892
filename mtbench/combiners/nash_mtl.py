"""Nash-MTL: the Nash bargaining solution of the tasks' gradients."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import nash_mtl_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.options import Option, boolean, integer, number


class NashMTL(GramWeighted):
    """Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game", eq. 4 and
    Algorithm 1): weights alpha > 0 solving G alpha = 1 / alpha, every task's share of the update
    d = sum_i alpha_i g_i being g_i . d = 1 / alpha_i; recomputed every
    ``update_weights_every`` steps, reused in between, each solve warm-started from the last
    alpha (the combiner's state, saved in checkpoints).

    mtbench's own solver computes alpha (:func:`functional.nash_mtl_weights_from_gram`: damped
    Newton steps on the strictly convex function whose minimiser alpha is, to rounding, from the
    float64 Gram matrix). The authors' code, and torchjd's ``NashMTL`` that follows it,
    approximate the same alpha by up to 20 cvxpy steps stopped at a 1e-3 residual, and fail
    (negative shares) on rank-deficient Gram matrices, and take far longer (rows ``nash_mtl``
    and ``nash_mtl-torchjd`` of ``scripts/bench_solvers.py``; the tests compare the two where
    torchjd's iterations converge).

    Scale: the paper's d has ||d||^2 = T whatever the gradients' lengths; ``rescale: true``
    multiplies it by 1^T G alpha / alpha^T G alpha (the projection of the baseline's sum onto
    Nash-MTL's direction: T g for T equal gradients g); ``rescale: false``: the paper's.
    ``max_norm`` > 0 scales the update down to that norm when longer (the authors' code uses
    1.0; here 0 = off, since clipping changes the scale; ``combiner=clip`` is mtbench's).
    """

    name = "nash_mtl"
    style = ("#9edae5", "2")
    options = {
        **GramWeighted.level_default("representation"),
        "max_norm": Option(
            0.0, "clip the update to this norm (>= 0; 0: off; the authors' code uses 1.0)", number(minimum=0)
        ),
        "update_weights_every": Option(1, "recompute the weights every this many steps (>= 1)", integer(minimum=1)),
        "rescale": Option(
            True, "scale the update to the projection of the baseline's sum on it (the baseline's scale)", boolean()
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.steps = 0
        self.alpha: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        if self.weights is None or self.steps % self.update_weights_every == 0:
            self.weights, self.alpha = nash_mtl_weights_from_gram(
                gram, self.alpha, max_norm=self.max_norm, rescale=self.rescale
            )
        self.steps += 1
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alpha": None if self.alpha is None else self.alpha.clone(),
            "weights": None if self.weights is None else self.weights.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        alpha, weights = state.get("alpha"), state.get("weights")
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).clone()
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).clone()

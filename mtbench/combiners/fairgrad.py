"""FairGrad: alpha-fair allocation of the update's progress among the tasks."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.functional import FAIRGRAD_SOLVERS, fairgrad_state, fairgrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.options import Option, boolean, integer, number


class FairGrad(WarmStarted):
    """FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", eq. 4):
    weights w > 0 solving G w = w^(-1/alpha), so that every task's progress g_i . d of the update
    d = sum_i w_i g_i is alpha-fair (alpha -> 0: the mean; 1: proportional fairness; large:
    max-min).

    mtbench's own solver computes the weights (``solver: newton``, :func:`functional.fairgrad_weights_from_gram`:
    damped Newton steps on the strictly convex function whose minimiser they are, from the
    float64 Gram matrix, each solve warm-started from the last step's, which is the
    combiner's state, saved in checkpoints); ``solver: scipy`` is torchjd's
    ``FairGradWeighting(alpha)`` (scipy's bounded least squares, as the authors' code), the same
    weights where its iterations converge, about 14 times slower on a 40 x 40 matrix. Scale: the
    paper's weights carry their own length (equal agreeing gradients of norm n get
    w_i = (T n^2)^(-alpha/(1+alpha))); with ``rescale: true`` d is multiplied by
    1^T G w / w^T G w, which makes it the projection of the baseline's sum onto FairGrad's
    direction (exactly the sum for equal agreeing gradients); ``rescale: false``: the paper's
    (and torchjd's) d. Options: those of :class:`GramWeighted` (``level`` defaulting to
    ``representation``), ``alpha`` > 0, ``max_iters``, ``rescale``, ``solver``.
    """

    name = "fairgrad"
    style = ("#ff9896", "8")
    options = {
        **GramWeighted.level_default("representation"),
        "alpha": Option(
            1.0, "the fairness parameter alpha (> 0; 1: proportional fairness)", number(minimum=0, min_open=True)
        ),
        "max_iters": Option(
            None,
            "iterations of the solver; null: 100 Newton steps (newton), scipy's default 100 T (scipy)",
            integer(minimum=1, optional=True),
        ),
        "rescale": Option(
            True, "scale the update to the projection of the baseline's sum on it (the baseline's scale)", boolean()
        ),
        "solver": Option(
            "newton",
            "newton: mtbench's damped Newton solve (warm-started); scipy: torchjd's least squares",
            one_of(*FAIRGRAD_SOLVERS),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        # a missing solver fails here
        fairgrad_weights_from_gram(torch.eye(1, dtype=torch.float64), alpha=self.alpha, solver=self.solver)

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.start = fairgrad_state(
            gram, self.alpha, self.max_iters, self.rescale, self.solver, start=self.start
        )
        return weights

"""FairGrad: alpha-fair allocation of the update's progress among the tasks."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import fairgrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.options import Option, boolean, integer, number


class FairGrad(GramWeighted):
    """FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", eq. 4):
    weights w > 0 solving G w = w^(-1/alpha), so that every task's progress g_i . d of the update
    d = sum_i w_i g_i is alpha-fair (alpha -> 0: the mean; 1: proportional fairness; large:
    max-min).

    The weights come from torchjd's ``FairGradWeighting(alpha)`` (scipy's bounded least squares)
    fed mtbench's float64 Gram matrix (:func:`functional.fairgrad_weights_from_gram`). Scale: the
    paper's weights carry their own length (equal agreeing gradients of norm n get
    w_i = (T n^2)^(-alpha/(1+alpha))); with ``rescale: true`` d is multiplied by
    1^T G w / w^T G w, which makes it the projection of the baseline's sum onto FairGrad's
    direction (exactly the sum for equal agreeing gradients); ``rescale: false``: the paper's
    (and torchjd's) d. Options: those of :class:`GramWeighted` (``level`` defaulting to
    ``representation``), ``alpha`` > 0, ``max_iters``, ``rescale``.
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
            "iterations of the least-squares solver; null: scipy's default (100 T)",
            integer(minimum=1, optional=True),
        ),
        "rescale": Option(
            True, "scale the update to the projection of the baseline's sum on it (the baseline's scale)", boolean()
        ),
    }

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        fairgrad_weights_from_gram(torch.eye(1, dtype=torch.float64), alpha=self.alpha)  # a missing solver fails here

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return fairgrad_weights_from_gram(gram, alpha=self.alpha, max_iters=self.max_iters, rescale=self.rescale)

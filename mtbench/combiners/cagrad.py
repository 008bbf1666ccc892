"""CAGrad: the update that best improves the worst task within a ball around the mean gradient."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import cagrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.options import Option, number


class CAGrad(GramWeighted):
    """CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
    Algorithm 1): d = g0 + (sqrt(phi) / ||g_w||) g_w, g0 the mean gradient, sqrt(phi) = c ||g0||,
    g_w = sum_i w_i g_i with w on the simplex minimising g_w . g0 + sqrt(phi) ||g_w||.

    The weights come from torchjd's ``CAGradWeighting(c)`` (cvxpy's CLARABEL solver of the dual
    problem) fed mtbench's float64 Gram matrix (:func:`functional.cagrad_weights_from_gram`).
    Scale: T / (1 + c) times the paper's d (and torchjd's ``CAGrad(c)``): equal agreeing
    gradients give d = (1 + c) g, here the baseline's sum T g (the authors' code's
    ``rescale=2`` divides by 1 + c too). Options: those of :class:`GramWeighted` (``level``
    defaulting to ``representation``) and ``c`` >= 0 (0: the mean gradient).
    """

    name = "cagrad"
    style = ("#98df8a", "H")
    options = {
        **GramWeighted.level_default("representation"),
        "c": Option(
            0.4,
            "radius of the ball around the mean gradient, relative to its norm (>= 0; the paper's 0.4)",
            number(minimum=0),
        ),
    }

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        cagrad_weights_from_gram(torch.eye(1, dtype=torch.float64), c=self.c)  # a missing solver fails here

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return cagrad_weights_from_gram(gram, c=self.c)

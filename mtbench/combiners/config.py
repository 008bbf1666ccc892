"""ConFIG: the conflict-free direction with equal cosine to every task gradient."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import config_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted


class ConFIG(GramWeighted):
    """ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", eq. 2): the unit direction v proportional to pinv([u_1 .. u_T]^T) 1 (u_i
    the unit gradients: equal cosine to every task), scaled by sum_j g_j . v.

    mtbench's own code computes it from the float64 Gram matrix
    (:func:`functional.config_weights_from_gram`; torchjd's ``ConFIG`` works on the gradients
    themselves, not their Gram matrix, and is the tests' reference). Scale: the paper's (and
    torchjd's) already, equal agreeing gradients giving the baseline's sum (factor 1). Options:
    those of :class:`GramWeighted`, ``level`` defaulting to ``representation``.
    """

    name = "config"
    style = ("#c5b0d5", "+")
    options = GramWeighted.level_default("representation")

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return config_weights_from_gram(gram)

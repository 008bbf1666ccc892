"""IMTL-G: the combination with equal projections on every task's unit gradient."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import imtl_g_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted


class IMTLG(GramWeighted):
    """IMTL-G, the gradient part of IMTL (Liu et al. 2021, "Towards Impartial Multi-task
    Learning", Sec. 3.2): weights summing to one whose combination d has the same projection
    d . u_i on every unit gradient u_i = g_i / ||g_i||; w is proportional to pinv(G) n, n_i =
    ||g_i|| (torchjd's generalisation to linearly dependent gradients).

    mtbench's own code of torchjd's ``IMTLGWeighting`` formula computes the weights from the
    float64 Gram matrix (:func:`functional.imtl_g_weights_from_gram`: a Cholesky solve where G is
    certified well conditioned, else torchjd's ``pinv``). Scale: T times the paper's (and torchjd's)
    weights summing to one, so equal agreeing gradients give the baseline's sum. Options:
    those of :class:`GramWeighted`, ``level`` defaulting to ``representation``.
    """

    name = "imtl_g"
    style = ("#aec7e8", "p")
    options = GramWeighted.level_default("representation")

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return imtl_g_weights_from_gram(gram)

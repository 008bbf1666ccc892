"""Aligned-MTL: the task gradients aligned to an orthogonal system of equal magnitudes."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.functional import ALIGNED_MTL_SCALES, aligned_mtl_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.options import Option


class AlignedMTL(GramWeighted):
    """Aligned-MTL (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task
    Learning", Algorithm 1): with G = V L V^T, the balance transformation B = sqrt(s) V L^(-1/2)
    V^T (over the non-zero eigenvalues) turns the gradients into orthogonal ones of equal
    length sqrt(s); their mean is the update. ``scale_mode`` picks s: the smallest eigenvalue
    (``min``, the paper's), the median or the mean (``rmse``) one.

    mtbench's own code of torchjd's ``AlignedMTLWeighting`` formula computes the weights from
    the float64 Gram matrix (:func:`functional.aligned_mtl_weights_from_gram`). Scale: T times torchjd's (the paper's
    mean), so equal agreeing gradients give the baseline's sum. Options: those of
    :class:`GramWeighted` (``level`` defaulting to ``representation``) and ``scale_mode``.
    """

    name = "aligned_mtl"
    style = ("#ffbb78", "d")
    options = {
        **GramWeighted.level_default("representation"),
        "scale_mode": Option(
            "min",
            "the common length of the aligned gradients: min | median | rmse (eigenvalue of G)",
            one_of(*ALIGNED_MTL_SCALES),
        ),
    }

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return aligned_mtl_weights_from_gram(gram, scale_mode=self.scale_mode)

"""Aligned-MTL: the task gradients aligned to an orthogonal system of equal magnitudes."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import (
    _check_option,
    _combine_rows,
)
from mtbench.options import Option

ALIGNED_MTL_SCALES = ("min", "median", "rmse")


def aligned_mtl_weights_from_gram(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL (Senushkin et al. 2023, Algorithm 1): T times torchjd's
    ``AlignedMTLWeighting(scale_mode=...)`` (the gradients whitened to an orthogonal system
    with equal singular values, sigma_min, the median or the mean eigenvalue's root), mtbench's
    own code of torchjd's formula: with G = V diag(lambda) V^T and the eigenvalues above
    T eps max(lambda) kept, alpha = sqrt(scale) V_k diag(lambda_k^(-1/2)) V_k^T (1 / T) (the
    identity, so alpha = 1 / T, when none is kept), applied to the vector instead of forming
    the T x T balance matrix (faster than torchjd's: rows ``aligned_mtl`` and
    ``aligned_mtl-torchjd`` of ``scripts/bench_solvers.py``)."""
    from mtbench.combiners.jd import gram_np64

    _check_option(
        "aligned_mtl",
        "scale_mode",
        scale_mode,
        scale_mode in ALIGNED_MTL_SCALES,
        "one of " + ", ".join(ALIGNED_MTL_SCALES),
    )
    g = gram_np64(gram, "aligned_mtl")
    n_tasks = g.shape[0]
    evals, evecs = (x.numpy() for x in torch.linalg.eigh(torch.from_numpy(g)))
    keep = evals > evals.max() * n_tasks * np.finfo(np.float64).eps
    if not bool(keep.any()):
        return torch.ones(n_tasks, dtype=torch.float64)
    lam, vec = evals[keep], evecs[:, keep]
    if scale_mode == "min":
        scale = lam.min()
    elif scale_mode == "median":
        scale = float(torch.median(torch.from_numpy(lam)))  # (torch's median: the lower middle value)
    else:
        scale = lam.mean()
    mean = np.full(n_tasks, 1.0 / n_tasks)
    alpha = math.sqrt(scale) * (vec @ ((vec.T @ mean) / np.sqrt(lam)))
    return torch.from_numpy(n_tasks * alpha)


def aligned_mtl(grads: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL of the rows of ``grads``: T x torchjd's ``AlignedMTL(scale_mode=...)``."""
    return _combine_rows(grads, "aligned_mtl", aligned_mtl_weights_from_gram, scale_mode=scale_mode)


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

"""IMTL-G: the combination with equal projections on every task's unit gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import _combine_rows
from mtbench.combiners.solvers.certified import well_conditioned_solve


def imtl_g_weights_from_gram(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al. 2021, the gradient part): T times the weights of torchjd's
    ``IMTLGWeighting()`` (w proportional to pinv(G) ||g||, normalised to sum 1, zero when that
    sum is below 1e-12; the combination has equal projections on every unit gradient
    u_i = g_i / ||g_i||), mtbench's own code of that formula: where G's Cholesky factor certifies
    it well conditioned (:func:`~mtbench.combiners.linalg.well_conditioned_solve`) pinv(G) ||g|| is
    G^{-1} ||g|| and comes from two triangular solves, else from ``torch.linalg.pinv`` as in
    torchjd (the same numbers to rounding, faster: rows ``imtl_g`` and ``imtl_g-torchjd`` of
    ``scripts/bench_solvers.py``)."""
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "imtl_g")
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    v = well_conditioned_solve(g, norms)
    if v is None:
        v = torch.linalg.pinv(torch.from_numpy(g)).numpy() @ norms
    total = float(v.sum())
    if not abs(total) >= 1e-12:
        return torch.zeros(g.shape[0], dtype=torch.float64)
    return torch.from_numpy(g.shape[0] * (v / total))


def imtl_g(grads: Tensor) -> Tensor:
    """IMTL-G of the rows of ``grads``: T x torchjd's ``IMTLG()``."""
    return _combine_rows(grads, "imtl_g", imtl_g_weights_from_gram)


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

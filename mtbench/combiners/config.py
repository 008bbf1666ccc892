"""ConFIG: the conflict-free direction with equal cosine to every task gradient."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import _combine_rows, _norms_and_inverses
from mtbench.combiners.solvers.certified import well_conditioned_solve


def config_weights_from_gram(gram: Tensor) -> Tensor:
    """ConFIG (Liu et al. 2024, eq. 2) from the Gram matrix, mtbench's own code (torchjd's
    ``ConFIG`` needs the gradients themselves).

    With unit gradients u_i = g_i / ||g_i|| (a zero g_i gives u_i = 0) and U their Gram matrix,
    the direction is v = sum_i a_i u_i, a = pinv(U) 1 (the least-norm x with u_i . x = 1 for
    all i, which is pinv([u_1 .. u_T]^T) 1), normalised to unit length; the length is
    sum_j g_j . v. The result, (sum_j g_j . v) v, is already on the baseline's scale (equal
    agreeing gradients give T g) and equals torchjd's ``ConFIG()``."""
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "config")
    n_tasks = g.shape[0]
    _, inv = _norms_and_inverses(g)
    units = g * inv[:, None] * inv[None, :]
    # pinv of the unit Gram matrix: eigenvalues below its rounding level (1000 T eps of the
    # largest) count as zero, i.e. singular values of the unit gradients below about 1e-6 T^0.5
    # of the largest (torch.linalg.pinv of the gradients themselves keeps them down to ~1e-15)
    # (well conditioned, as certified by its Cholesky factor: pinv(U) 1 = U^{-1} 1)
    a = well_conditioned_solve(units, np.ones(n_tasks))
    if a is None:
        evals, evecs = (x.numpy() for x in torch.linalg.eigh(torch.from_numpy(units)))
        cut = float(evals.max()) * 1000.0 * n_tasks * np.finfo(np.float64).eps
        keep = evals > max(cut, 1e-300)
        ones_in_range = evecs.sum(0) * keep  # the all-ones vector in the kept eigenbasis
        # no component of 1 in U's range beyond rounding (e.g. opposing rows of one rank):
        # pinv(U) 1 is then 0, and what the solve would give is rounding noise
        if not float(np.linalg.norm(ones_in_range)) > cut / max(float(evals.max()), 1e-300) * math.sqrt(n_tasks):
            return torch.zeros(n_tasks, dtype=torch.float64)
        inv_evals = np.zeros_like(evals)
        inv_evals[keep] = 1.0 / evals[keep]
        a = evecs @ (inv_evals * ones_in_range)
    coeff = a * inv  # v (before normalising) = sum_i coeff_i g_i
    norm2 = float(coeff @ g @ coeff)
    if not norm2 > 0:
        return torch.zeros(n_tasks, dtype=torch.float64)
    coeff = coeff / math.sqrt(norm2)
    return torch.from_numpy(float((g @ coeff).sum()) * coeff)


def config(grads: Tensor) -> Tensor:
    """ConFIG of the rows of ``grads`` [T, D] (see :func:`config_weights_from_gram`)."""
    return _combine_rows(grads, "config", config_weights_from_gram)


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

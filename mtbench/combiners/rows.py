"""The [T, D] stacks every functional method takes: the checks, the combination of the rows
by weights from their float64 Gram matrix, and small helpers on that matrix."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.linalg import combine, gram64


def _check_grads(grads: Tensor, fn: str, min_dim: int = 1) -> None:
    if not isinstance(grads, Tensor):
        raise TypeError(f"{fn}: grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.dim() < min_dim:
        raise ValueError(
            f"{fn}: grads must have at least {min_dim} dimension(s) (tasks first); got shape {tuple(grads.shape)}"
        )
    if not grads.is_floating_point():
        raise ValueError(f"{fn}: grads must be a floating-point tensor; got dtype {grads.dtype}")


# Each ``<name>_weights_from_gram(gram, ...)`` returns [T] float64 CPU weights w such that the
# shared gradient is sum_i w_i g_i on mtbench's scale (equal, agreeing gradients g_i = g give
# T g, the baseline's sum); each ``<name>(grads, ...)`` is that combination of the rows of a
# [T, D] stack (the Gram matrix accumulated in float64), shape grads.shape[1:].


def _combine_rows(grads: Tensor, fn: str, weights_from_gram, **options) -> Tensor:
    _check_grads(grads, fn)
    if grads.shape[0] == 0:
        return grads.sum(dim=0)  # no task: zeros
    flat = grads.reshape(grads.shape[0], -1)
    weights = weights_from_gram(gram64(flat.detach()).cpu(), **options)
    return combine(weights, flat).reshape(grads.shape[1:])


def _check_option(fn: str, name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{fn}: {name} must be {allowed}; got {value!r}")


#: the ridge quadprog's dual-cone solves add to the unit gradients' Gram matrix (torchjd's
#: default 1e-4 on the trace-normalised raw one leaves small tasks' constraints unenforced


def _norms_and_inverses(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gradients' norms ||g_i|| from their Gram matrix and their inverses (0 for a zero
    gradient)."""
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    inv = np.zeros_like(norms)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return norms, inv


def _projection_scale(g: np.ndarray, w: np.ndarray) -> float:
    """The factor s >= 0 for which s sum_i w_i g_i is the projection of sum_i g_i onto the
    direction sum_i w_i g_i: s = 1^T G w / w^T G w (0 when the combination is zero)."""
    gw = g @ w
    norm2 = float(w @ gw)
    along = float(gw.sum())
    if not (norm2 > 0 and math.isfinite(norm2)):
        return 0.0
    return max(along, 0.0) / norm2


def _frobenius(g: np.ndarray) -> float:
    """||g||_F, summed by NumPy without BLAS (a BLAS dot's threads would contend with torch's)."""
    return math.sqrt(float(np.square(g).sum()))


def gram_square_root(gram: Tensor) -> Tensor:
    """A [T, T] matrix M with M M^T = gram (float64, from its eigendecomposition, negative
    rounding eigenvalues set to 0): a stand-in for the gradients where a solver wants a matrix."""
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))
    return evecs * evals.clamp_min(0).sqrt()[None, :]

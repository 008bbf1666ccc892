"""The certified solve of IMTL-G and ConFIG: ``G^{-1} b`` by the Cholesky factor of G where the
factor certifies G's condition number below a bound, else None (the caller then takes a
pseudo-inverse). Compiled below ``COMPILED_BELOW`` tasks
(:mod:`mtbench.combiners.solvers.certified_compiled`), torch's LAPACK above: each form is the
faster on its side (docs/performance.md, "Compiled and batched forms of one solver")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.solvers import COMPILED_BELOW

#: the largest condition number :func:`well_conditioned_solve` accepts: far below the 1 / (T eps)
#: at which pseudo-inverses start dropping directions, and small enough that its solve and an
#: SVD-based pseudo-inverse agree to about 1e-8 relative
MAX_CERTIFIED_CONDITION = 1e8


def well_conditioned_solve(gram: Tensor | np.ndarray, rhs: Tensor | np.ndarray) -> Tensor | np.ndarray | None:
    """``gram^{-1} rhs`` for a symmetric float64 [T, T] ``gram`` by its Cholesky factor L, when
    the factor certifies the condition number below :data:`MAX_CERTIFIED_CONDITION`; else None.
    NumPy arrays in (``rhs`` a vector), a NumPy array out: below 64 tasks by one compiled call
    (:func:`~mtbench.combiners.solvers.certified_compiled.certified_solve`, the same certificate), else by torch's.

    The certificate: ``||G^{-1}||_2 <= ||G^{-1}||_F <= ||L^{-1}||_F^2`` and ``||G||_2 <=
    ||G||_F``, so ``||G||_F ||L^{-1}||_F^2`` bounds the condition number from above. Below the
    bound, no eigenvalue of G is near the cut-off of a pseudo-inverse (``T eps`` of the largest,
    or 1000 times that), so ``pinv(G) rhs`` is this same solution in exact arithmetic, and the
    two computed ones differ by rounding only. Two triangular O(T^3 / 3) steps instead of an
    SVD or eigendecomposition (timed against the pseudo-inverse: docs/performance.md, "The
    solvers alone", rows imtl_g and imtl_g-torchjd).
    """
    if isinstance(gram, np.ndarray):
        if gram.shape[0] < COMPILED_BELOW:
            from mtbench.combiners.solvers.certified_compiled import certified_solve

            out = np.empty(gram.shape[0])
            ok = certified_solve(
                np.ascontiguousarray(gram), np.ascontiguousarray(rhs, dtype=np.float64), MAX_CERTIFIED_CONDITION, out
            )
            return out if ok else None
        solved = well_conditioned_solve(torch.from_numpy(gram), torch.from_numpy(np.asarray(rhs, dtype=np.float64)))
        return None if solved is None else solved.numpy()
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    inv_factor = torch.linalg.solve_triangular(factor, eye, upper=False)
    bound = float(torch.linalg.norm(gram)) * float(inv_factor.pow(2).sum())
    if not bound <= MAX_CERTIFIED_CONDITION:  # (also False for NaN)
        return None
    flat = rhs.reshape(gram.shape[0], -1)
    return (inv_factor.T @ (inv_factor @ flat)).reshape(rhs.shape)

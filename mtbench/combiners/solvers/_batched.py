"""What the batched solver forms share (the Newton solve's and the dual-cone pivoting's, from
``COMPILED_BELOW`` tasks on): large products and solves through torch's LAPACK and BLAS."""

from __future__ import annotations

import numpy as np
import torch

#: solves and products at least this large run in torch: NumPy's OpenBLAS threads, started
#: beside torch's inside a training step, contend with them for the cores (below it NumPy's
#: per-call overhead is far below torch's)
_TORCH_SOLVE_SIZE = 64


def _matvec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """m @ v (a vector or a matrix v), by torch for large operands (see ``_TORCH_SOLVE_SIZE``)."""
    if v.shape[0] >= _TORCH_SOLVE_SIZE:
        return (torch.from_numpy(np.ascontiguousarray(m)) @ torch.from_numpy(np.ascontiguousarray(v))).numpy()
    return m @ v


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solution of the square float64 system a x = b: LU (torch's LAPACK for large
    systems, see ``_TORCH_SOLVE_SIZE``), falling back to SVD-based least squares (LAPACK
    gelsd) when the system is numerically singular."""
    try:
        if a.shape[0] >= _TORCH_SOLVE_SIZE:
            x = torch.linalg.solve(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        else:
            x = np.linalg.solve(a, b)
        if bool(np.isfinite(x).all()):
            return x
    except (np.linalg.LinAlgError, RuntimeError):
        pass
    return np.linalg.lstsq(a, b, rcond=None)[0]

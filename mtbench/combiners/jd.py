"""The bridge to torchjd (https://github.com/TorchJD/torchjd, MIT): its weightings of a Gramian,
fed mtbench's own float64 Gram matrix of the per-task gradients.

torchjd computes the weights of ``upgrad``, ``dualproj`` (``solver: quadprog``, and the
fallback of their own solver), ``cagrad`` (``solver: cvxpy``) and ``fairgrad`` (``solver:
scipy``); see each
function of :mod:`mtbench.combiners.functional`. Its solvers need optional packages (quadprog and qpsolvers, cvxpy, scipy), installed by ``pip install "mtbench[zoo]"``. A missing one is a
one-line :class:`~mtbench.MtbenchError` naming the package and the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtbench.errors import MtbenchError

__all__ = ["gram_cpu64", "gram_np64", "require", "weighting"]

#: the optional packages each torchjd weighting imports
NEEDS = {
    "UPGradWeighting": ("quadprog", "qpsolvers"),
    "DualProjWeighting": ("quadprog", "qpsolvers"),
    "CAGradWeighting": ("cvxpy", "clarabel"),
    "FairGradWeighting": ("scipy",),
    "NashMTL": ("cvxpy", "ecos"),
}


def _missing(packages: tuple[str, ...]) -> list[str]:
    from importlib.util import find_spec

    return [p for p in packages if find_spec(p) is None]


def require(cls_name: str, method: str) -> None:
    """A one-line MtbenchError naming what to install for ``method`` when torchjd or a package
    its ``cls_name`` imports is missing."""
    missing = _missing(("torchjd",) + NEEDS.get(cls_name, ()))
    if missing:
        raise MtbenchError(
            f'{method} needs the package(s) {", ".join(missing)}: pip install "mtbench[zoo]" (or pip install {" ".join(missing)})'
        )


def weighting(cls_name: str, method: str, **kwargs: Any) -> Any:
    """An instance of ``torchjd.aggregation.<cls_name>(**kwargs)``, or a one-line MtbenchError
    naming what to install for ``method``."""
    require(cls_name, method)
    import torchjd.aggregation as aggregation

    factory: Callable[..., Any] = getattr(aggregation, cls_name)
    try:
        return factory(**kwargs)
    except ImportError as e:  # a dependency torchjd checks for itself
        raise MtbenchError(f'{method}: {e} (pip install "mtbench[zoo]")') from None


def _square64(gram: Tensor, fn: str) -> Tensor:
    """``gram`` as a float64 CPU tensor without a graph, checked square [T, T] with T >= 1."""
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"{fn}: gram must be a square [T, T] tensor with T >= 1; got {shape}")
    return gram.detach().to(device="cpu", dtype=torch.float64)


def _not_finite(fn: str) -> ValueError:
    return ValueError(f"{fn}: the gradients (or their Gram matrix) contain NaN or infinite values")


def gram_cpu64(gram: Tensor, fn: str) -> Tensor:
    """A square Gram matrix as a symmetric float64 CPU tensor (no graph), checked finite."""
    g = _square64(gram, fn)
    if not bool(torch.isfinite(g).all()):
        raise _not_finite(fn)
    return 0.5 * (g + g.T)


def gram_np64(gram: Tensor, fn: str) -> np.ndarray:
    """:func:`gram_cpu64` as a NumPy array (the same numbers): for solvers whose few dozen small
    operations cost less in NumPy than in torch, whose per-call overhead dominates at T = 40."""
    g = _square64(gram, fn).numpy()
    if not bool(np.isfinite(g).all()):
        raise _not_finite(fn)
    return 0.5 * (g + g.T)

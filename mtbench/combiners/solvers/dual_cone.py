"""The dual-cone QPs of UPGrad and DualProj (and CAGrad's Pareto front): block principal
pivoting on the unit gradients' Gram matrix, compiled (:mod:`.dual_cone_compiled`; why one
form: docs/performance.md, "Compiled and batched forms of one solver"), with quadprog (torchjd)
as the fallback and the option."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.rows import (
    _check_option,
    _norms_and_inverses,
)
from mtbench.combiners.solvers import _PIVOT_REL_TOL, _PIVOT_RETRIES

DUAL_CONE_REG = 1e-9


DUAL_CONE_SOLVERS = ("active_set", "quadprog")
#: block principal pivoting's sweeps before the QPs fall back to quadprog (a safeguard; the tests force it)
_PIVOT_MAX_SWEEPS = 100


def _dual_cone_pivoting(a: Tensor, u: Tensor, free: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """V [R, T] with V[r] = argmin_v 1/2 v^T A v subject to v >= U[r] for each row of ``u``
    [R, T], A [T, T] positive definite, the final free sets (v > U) [R, T] and which rows
    settled [R] (a row that did not settle within ``_PIVOT_MAX_SWEEPS`` sweeps has no
    solution in V); None if a Cholesky factorisation failed. Block principal pivoting, each
    row on its own (:func:`mtbench.combiners.solvers.dual_cone_compiled.dual_cone_pivots`
    documents it), from ``free`` (the last step's sets; None: all v = U)."""
    an = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    un = u.detach().to(device="cpu", dtype=torch.float64).numpy()
    rows, n = un.shape
    scale = float(an.diagonal().max()) * max(float(np.abs(un).max()), 1e-300)
    f = np.zeros((rows, n), dtype=bool) if free is None else free.numpy().astype(bool, copy=True)
    from mtbench.combiners.solvers.dual_cone_compiled import dual_cone_pivots

    v, settled = np.empty((rows, n)), np.empty(rows, dtype=bool)
    if not dual_cone_pivots(
        np.ascontiguousarray(an), un, f.copy(), _PIVOT_REL_TOL * scale, _PIVOT_MAX_SWEEPS, _PIVOT_RETRIES, v, f, settled
    ):
        return None
    return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(settled)


def _quadprog_projector(method: str):
    """torchjd's quadprog projector with mtbench's ridge (it scales the Gram matrix to trace 1
    and adds ``DUAL_CONE_REG`` I, the matrix of :func:`_dual_cone_pivoting`)."""
    from mtbench.combiners.jd import require

    require("UPGradWeighting", method)  # a missing solver package is a one-line error here
    import torchjd.linalg as jdl

    return jdl.QuadprogProjector(reg_eps=DUAL_CONE_REG)


def dual_cone_state(
    gram: Tensor, method: str = "upgrad", solver: str = "active_set", start: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """UPGrad's (``method="upgrad"``) or DualProj's (``"dualproj"``) weights from the Gram
    matrix, and the solver's final free sets (the next solve's ``start``; None for quadprog).

    The dual cone {x : g_j . x >= 0} is that of the unit gradients g_j / ||g_j||, so the QPs
    run on their Gram matrix (diagonal 1) divided by its trace, plus 1e-9 I (``DUAL_CONE_REG``),
    with the preference (the mean's, 1 / T) scaled by the norms; the weights are mapped back
    to the g_i. UPGrad projects each g_i (T QPs, preference rows p_i e_i) and sums; DualProj
    projects the sum (one QP, preference row p). ``solver="active_set"`` (default; mtbench's):
    block principal pivoting on all the QPs at once (:func:`_dual_cone_pivoting`), from
    ``start``, the exact solution of the same QPs, with quadprog solving the rows on which the
    pivoting does not settle (every row should a factorisation fail); ``"quadprog"``: torchjd's ``UPGradWeighting`` / ``DualProjWeighting``
    with its quadprog projector (same matrix, same ridge)."""
    from mtbench.combiners.jd import gram_np64

    _check_option(method, "solver", solver, solver in DUAL_CONE_SOLVERS, "one of " + ", ".join(DUAL_CONE_SOLVERS))
    return _dual_cone(gram_np64(gram, method), method, solver, start)


def _dual_cone(g: np.ndarray, method: str, solver: str, start: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """:func:`dual_cone_state` on the checked, symmetric float64 Gram matrix ``g``: in one
    compiled call where it applies
    (:func:`mtbench.combiners.solvers.dual_cone_compiled.dual_cone_weights`: no zero gradient, every row settled;
    the same arithmetic as the code below), else the code below."""
    from mtbench.combiners.jd import weighting

    n_tasks = g.shape[0]
    rows = n_tasks if method == "upgrad" else 1
    if solver == "active_set":
        from mtbench.combiners.solvers.dual_cone_compiled import dual_cone_weights

        first = np.zeros((rows, n_tasks), dtype=bool)
        if start is not None and tuple(start.shape) == (rows, n_tasks):
            first = start.numpy().astype(bool)
        weights, free = np.empty(n_tasks), np.empty((rows, n_tasks), dtype=bool)
        if dual_cone_weights(
            np.ascontiguousarray(g),
            method == "upgrad",
            first,
            DUAL_CONE_REG,
            _PIVOT_MAX_SWEEPS,
            weights,
            free,
            _PIVOT_REL_TOL,
            _PIVOT_RETRIES,
        ):
            return torch.from_numpy(weights), torch.from_numpy(free)
    norms, inv = _norms_and_inverses(g)
    if not bool((inv > 0).any()):
        return torch.full((n_tasks,), 1.0, dtype=torch.float64), None
    units = g * inv[:, None] * inv[None, :]
    pref = norms / n_tasks
    cls_name = "UPGradWeighting" if method == "upgrad" else "DualProjWeighting"
    unit_weights, free = None, None
    if solver == "active_set":
        a = units / units.diagonal().sum() + DUAL_CONE_REG * np.eye(n_tasks)
        u = torch.from_numpy(np.diag(pref) if method == "upgrad" else pref[None, :])
        if start is not None and tuple(start.shape) != tuple(u.shape):
            start = None
        solved = _dual_cone_pivoting(torch.from_numpy(a), u, start)
        if solved is not None:
            v, free, settled = solved
            if not bool(settled.all()):  # quadprog solves the rows that did not settle
                v, rest = v.clone(), ~settled
                v[rest] = _quadprog_projector(method)(u[rest], torch.from_numpy(units))
                free = free.clone()
                free[rest] = v[rest] > u[rest]
            unit_weights = v.numpy().sum(0)
    if unit_weights is None:
        jd = weighting(cls_name, method, pref_vector=torch.from_numpy(pref), projector=_quadprog_projector(method))
        unit_weights = jd(torch.from_numpy(units)).to(torch.float64).numpy()
    return torch.from_numpy(n_tasks * unit_weights * inv), free

"""The dual-cone QPs of UPGrad and DualProj (and CAGrad's Pareto front): block principal
pivoting on the unit gradients' Gram matrix, compiled below ``COMPILED_BELOW`` tasks, batched
Cholesky or conjugate gradients above, quadprog (torchjd) as the fallback and the option. Each
form is the faster on its side where the free sets are large (docs/performance.md, "Compiled
and batched forms of one solver")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.rows import (
    _check_option,
    _norms_and_inverses,
)
from mtbench.combiners.solvers import _PIVOT_REL_TOL, _PIVOT_RETRIES, COMPILED_BELOW
from mtbench.combiners.solvers._batched import _TORCH_SOLVE_SIZE, _matvec

#: the switch between the two forms (the benchmark forces it)
_COMPILED_BELOW = COMPILED_BELOW

DUAL_CONE_REG = 1e-9


DUAL_CONE_SOLVERS = ("active_set", "quadprog")
#: block principal pivoting's sweeps before the QPs fall back to quadprog (a safeguard; the tests force it)
_PIVOT_MAX_SWEEPS = 100


def _dual_cone_pivoting(a: Tensor, u: Tensor, free: Tensor | None) -> tuple[Tensor, Tensor, Tensor] | None:
    """V [R, T] with V[r] = argmin_v 1/2 v^T A v subject to v >= U[r] for each row of ``u``
    [R, T], A [T, T] positive definite, the final free sets (v > U) [R, T] and which rows
    settled [R] (a row that did not settle within ``_PIVOT_MAX_SWEEPS`` sweeps has no
    solution in V); None if a Cholesky factorisation failed.

    With x = v - U[r] >= 0 each row is the linear complementarity problem y = A x + A U[r] >= 0,
    x >= 0, x . y = 0 (a positive definite matrix: one solution). Block principal pivoting
    (Judice & Pires 1994, with Kim & Park's 2011 safeguard): for a guess F of the positive
    x's, x_F solves A_FF x_F = -(A U[r])_F and y = A x + A U[r] outside F; the entries where
    x < 0 in F or y < 0 outside F move across, all at once while their number falls (three
    more tries otherwise), else only the last one. Every row pivots at once: one batched
    Cholesky solve per sweep, of the free sets' systems (padded to the largest one; torch's
    LAPACK, :func:`_free_set_solve`); from ``_TORCH_SOLVE_SIZE`` tasks on, in a sweep whose
    free sets are large (``_CG_MIN_WIDTH_CUBED``), conjugate gradients from the last sweep's x (:func:`_free_set_cg`: [R, T] x [T, T] products instead
    of R factorisations, each row's true residual checked to 1e-2 of the pivoting's
    tolerance), until a sweep in which they do not converge for some row (an ill-conditioned
    A): Cholesky solves those rows and every later sweep. ``free`` (the last step's sets) is
    the first guess; None: all x = 0. The bookkeeping between the solves runs in NumPy. Below
    ``_COMPILED_BELOW`` tasks the same pivoting runs compiled, each row's sweeps one after
    another (:func:`mtbench.combiners.solvers.dual_cone_compiled.dual_cone_pivots`): at T = 40 a batched sweep
    costs more in calls than the compiled one's factorisations of its small free sets."""
    an = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    un = u.detach().to(device="cpu", dtype=torch.float64).numpy()
    rows, n = un.shape
    scale = float(an.diagonal().max()) * max(float(np.abs(un).max()), 1e-300)
    tol = _PIVOT_REL_TOL * scale
    f = np.zeros((rows, n), dtype=bool) if free is None else free.numpy().astype(bool, copy=True)
    if n < _COMPILED_BELOW:  # each row's sweeps one after another, compiled
        from mtbench.combiners.solvers.dual_cone_compiled import dual_cone_pivots

        v, settled = np.empty((rows, n)), np.empty(rows, dtype=bool)
        if not dual_cone_pivots(an, un, f.copy(), tol, _PIVOT_MAX_SWEEPS, _PIVOT_RETRIES, v, f, settled):
            return None
        return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(settled)
    q = _matvec(un, an)  # [R, T]: (A U[r]) (A symmetric)
    best = np.full(rows, n + 1)
    tries = np.full(rows, _PIVOT_RETRIES)
    last = np.arange(n)
    x = np.zeros((rows, n))
    y = q.copy()
    todo = np.arange(rows)  # the rows whose free set changed: only they are solved again
    count = np.ones(rows, dtype=np.int64)  # (no sweep yet: no row settled)
    every = np.arange(rows)
    use_cg = n >= _TORCH_SOLVE_SIZE  # conjugate gradients while they converge (:func:`_free_set_cg`)
    for _ in range(_PIVOT_MAX_SWEEPS):
        if use_cg and int(f[todo].sum(1).max(initial=0)) ** 3 > _CG_MIN_WIDTH_CUBED * n * n:
            xs, solved = _free_set_cg(an, q[todo], f[todo], x[todo], 1e-2 * tol)
            if not solved.all():  # ill-conditioned: Cholesky for these rows, and from here on
                use_cg = False
                rest = _free_set_solve(an, q[todo][~solved], f[todo][~solved])
                if rest is None:
                    return None
                xs[~solved] = rest
        else:
            xs = _free_set_solve(an, q[todo], f[todo])
            if xs is None:
                return None
        x[todo] = xs
        y[todo] = _matvec(xs, an) + q[todo]
        bad = np.where(f, x < -tol, y < -tol)
        count = bad.sum(1)
        if not count.any():
            break
        fewer = count < best
        best = np.where(fewer, count, best)
        tries = np.where(fewer, _PIVOT_RETRIES, tries - (count > 0))
        all_at_once = fewer | (tries >= 0)
        only_last = np.zeros_like(bad)
        only_last[every, np.maximum(np.where(bad, last, -1).max(1), 0)] = True
        f = f ^ np.where(all_at_once[:, None], bad, bad & only_last)
        todo = np.flatnonzero(count > 0)
    v = un + np.maximum(x, 0.0) * f
    return torch.from_numpy(v), torch.from_numpy(f), torch.from_numpy(count == 0)


#: conjugate-gradient iterations per sweep before a row's free-set system goes to Cholesky
_CG_MAX_ITER = 60
#: a sweep takes conjugate gradients when its largest free set w has w^3 > this times T^2: the
#: batched factorisations (w^3 / 3 each) would then cost more than about 20 T x T products at
#: BLAS speed (small free sets are cheaper by Cholesky)
_CG_MIN_WIDTH_CUBED = 6


def _free_set_cg(
    a: np.ndarray, q: np.ndarray, f: np.ndarray, x0: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """X [R, T] as :func:`_free_set_solve`'s, by conjugate gradients on every row's free-set
    system at once (A_FF is a principal submatrix of the positive definite A: at most A's
    condition number), from ``x0`` restricted to the free sets: one [R, T] x [T, T] product
    per iteration instead of R Cholesky factorisations of up to T unknowns. A row counts as
    solved when its true residual |(A x + q)_F| is at most ``tol`` everywhere (checked
    after the iterations, not the recurrence's); ``solved`` [R] says which rows are (the
    others want an exact factorisation)."""
    at = torch.from_numpy(a)
    m = torch.from_numpy(f.astype(np.float64))
    b = -torch.from_numpy(q) * m
    x = torch.from_numpy(x0).clamp_min(0.0) * m
    r = b - (x @ at) * m
    p = r.clone()
    rs = (r * r).sum(1)
    for _ in range(_CG_MAX_ITER):
        if not bool((r.abs().amax(1) > tol).any()):
            break
        ap = (p @ at) * m
        pap = (p * ap).sum(1)
        alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta[:, None] * p
        rs = rs_new
    residual = (b - (x @ at) * m).abs().amax(1) if x.shape[0] else torch.zeros(0, dtype=x.dtype)
    return x.numpy(), (residual <= tol).numpy()


def _free_set_solve(a: np.ndarray, q: np.ndarray, f: np.ndarray) -> np.ndarray | None:
    """X [R, T] with X[r]_F = -(A_FF)^-1 q[r]_F on row r's free set F = f[r] and 0 elsewhere:
    one batched Cholesky factorisation and solve (torch's LAPACK), each row's system padded
    with identity rows to the largest free set; None if a factorisation failed."""
    rows, n = f.shape
    sizes = f.sum(1)
    xs = np.zeros((rows, n))
    width = int(sizes.max()) if rows else 0  # the largest free set: every row's system padded to it
    if width == 0:
        return xs
    # each row's free indices first (the rest pad the system with identity rows)
    idx = torch.from_numpy(np.argsort(~f, axis=1, kind="stable")[:, :width])
    valid = (torch.arange(width)[None, :] < torch.from_numpy(sizes)[:, None]).to(torch.float64)
    sub = torch.from_numpy(a)[idx[:, :, None], idx[:, None, :]] * (valid[:, :, None] * valid[:, None, :])
    sub.diagonal(dim1=1, dim2=2).add_(1.0 - valid)
    factor, info = torch.linalg.cholesky_ex(sub)
    if bool(info.any()):
        return None
    rhs = -torch.from_numpy(q).gather(1, idx) * valid
    torch.from_numpy(xs).scatter_(1, idx, torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1) * valid)
    return xs


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
    """:func:`dual_cone_state` on the checked, symmetric float64 Gram matrix ``g``: below
    ``_COMPILED_BELOW`` tasks in one compiled call where it applies
    (:func:`mtbench.combiners.solvers.dual_cone_compiled.dual_cone_weights`: no zero gradient, every row settled;
    the same arithmetic as the code below), else the code below."""
    from mtbench.combiners.jd import weighting

    n_tasks = g.shape[0]
    rows = n_tasks if method == "upgrad" else 1
    if solver == "active_set" and n_tasks < _COMPILED_BELOW:
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

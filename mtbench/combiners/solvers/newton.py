"""The Newton solve of G x = x^(-1/p) (Nash-MTL: p = 1; FairGrad: p = alpha) on the normalised
Gram matrix with a small ridge: compiled below ``COMPILED_BELOW`` tasks, NumPy from there on and
where a Hessian does not factorise: each form is the faster on its side (docs/performance.md,
"Compiled and batched forms of one solver")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.rows import (
    _frobenius,
)
from mtbench.combiners.solvers import COMPILED_BELOW
from mtbench.combiners.solvers._batched import _matvec, _solve

#: the switch between the two forms (the benchmark forces it)
_COMPILED_BELOW = COMPILED_BELOW
NASH_RIDGE = 1e-8
#: the stopping rule and line search of both forms (NumPy below, compiled in
#: :mod:`~mtbench.combiners.solvers.newton_compiled`): stop when the squared Newton decrement is
#: at most the first; a step goes at most the second's fraction of the way to x = 0 and is halved
#: until it decreases the objective by the third times its predicted decrease, or is below the fourth
NEWTON_RULE = (1e-24, 0.99, 0.25, 1e-12)


def _fair_newton(g: np.ndarray, x0: np.ndarray | None, max_iter: int, power: float = 1.0) -> np.ndarray:
    """x > 0 with (Gn + ridge diag(Gn)) x = x^(-power), Gn = G / ||G||_F (no zero gradient in
    G), by damped Newton steps on the strictly convex 1/2 x^T Gn x - sum_i psi(x_i), psi' =
    x^(-power) (psi = log for power 1: Nash-MTL; FairGrad's power is 1 / alpha). Below
    ``_COMPILED_BELOW`` tasks compiled (:func:`mtbench.combiners.solvers.newton_compiled.fair_newton`, Newton's
    systems by Cholesky): at T = 40 a step is a few dozen tiny operations, whose calls cost
    more than their arithmetic. From there on (and should a Hessian not factorise) in NumPy,
    the large solves and products through :func:`_solve` and :func:`_matvec`."""
    n_tasks = g.shape[0]
    h = g / _frobenius(g)
    h = h + NASH_RIDGE * np.diag(h.diagonal())
    a = None if x0 is None else np.array(x0, dtype=np.float64)
    if a is None or a.shape != (n_tasks,) or not (a > 0).all() or not np.isfinite(a).all():
        a = np.ones(n_tasks)
    if n_tasks < _COMPILED_BELOW:  # the same iteration, compiled (NumPy's below if it fails)
        from mtbench.combiners.solvers.newton_compiled import fair_newton

        compiled = a.copy()
        if fair_newton(h, compiled, max_iter, float(power), *NEWTON_RULE):
            return compiled
    log = power == 1.0
    tol, boundary, decrease, min_step = NEWTON_RULE

    def phi(x: np.ndarray) -> float:
        barrier = np.log(x).sum() if log else np.power(x, 1.0 - power).sum() / (1.0 - power)
        return float(0.5 * (x @ _matvec(h, x)) - barrier)

    value = phi(a)
    for _ in range(max_iter):
        inv = 1.0 / a if log else np.power(a, -power)
        grad = _matvec(h, a) - inv
        curvature = 1.0 / (a * a) if log else power * inv / a  # -psi''(x) = power x^(-power - 1)
        hess = h.copy()
        hess[np.diag_indices(n_tasks)] += curvature
        step = _solve(hess, grad)
        decrement = float(grad @ step)  # the squared Newton decrement
        if not decrement > tol:
            break
        t = 1.0
        ahead = step > 0
        if ahead.any():
            t = min(1.0, boundary * float((a[ahead] / step[ahead]).min()))
        while True:
            trial = a - t * step
            trial_value = phi(trial)
            if trial_value <= value - decrease * t * decrement or t < min_step:
                break
            t *= 0.5
        if not trial_value < value:
            break
        a, value = trial, trial_value
    return a


def _live_newton(g: np.ndarray, start: Tensor | None, max_iter: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_fair_newton` on the tasks with a non-zero gradient (the others get 1, which
    multiplies zero), from ``start`` [T] where it has the right shape: the solution [T] and
    the mask of those tasks."""
    n_tasks = g.shape[0]
    live = g.diagonal() > 0
    whole = bool(live.all())
    x0 = None
    if start is not None and tuple(start.shape) == (n_tasks,):
        x0 = start.detach().to(device="cpu", dtype=torch.float64).numpy()
        x0 = x0 if whole else x0[live]
    x = np.ones(n_tasks)
    x[live] = _fair_newton(g if whole else g[np.ix_(live, live)], x0, max_iter, power)
    return x, live

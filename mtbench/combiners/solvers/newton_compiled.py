"""The damped Newton iteration of Nash-MTL and FairGrad below ``COMPILED_BELOW`` tasks, compiled
(:func:`fair_newton`); :mod:`mtbench.combiners.solvers.newton` calls it."""

from __future__ import annotations

import numpy as np

from mtbench.combiners.solvers._compiled import _cholesky_solve, _compiled


@_compiled
def _barrier_objective(h: np.ndarray, x: np.ndarray, power: float) -> float:
    """1/2 x^T h x - sum_i psi(x_i), psi = log (power 1) or x^(1 - power) / (1 - power)."""
    n = h.shape[0]
    quad = 0.0
    barrier = 0.0
    for i in range(n):
        s = 0.0
        for j in range(n):
            s += h[i, j] * x[j]
        quad += x[i] * s
        barrier += np.log(x[i]) if power == 1.0 else x[i] ** (1.0 - power) / (1.0 - power)
    return 0.5 * quad - barrier


@_compiled
def fair_newton(
    h: np.ndarray,
    a: np.ndarray,
    max_iter: int,
    power: float,
    tol: float,
    boundary: float,
    decrease: float,
    min_step: float,
) -> bool:
    """Damped Newton steps on 1/2 x^T h x - sum_i psi(x_i) (psi' = x^(-power); h [T, T] positive
    definite), in place on ``a`` > 0, with the stopping rule and line search of
    :data:`mtbench.combiners.solvers.newton.NEWTON_RULE` (``tol``, ``boundary``, ``decrease``,
    ``min_step``): the same iteration as :func:`mtbench.combiners.solvers.newton._fair_newton`'s
    NumPy loop, Newton's systems by Cholesky, at most ``max_iter`` steps. False if a Hessian was
    not numerically positive definite (``a`` then holds the last iterate)."""
    n = h.shape[0]
    hess = np.empty((n, n))
    chol = np.empty((n, n))
    grad = np.empty(n)
    step = np.empty(n)
    trial = np.empty(n)
    value = _barrier_objective(h, a, power)
    for _ in range(max_iter):
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += h[i, j] * a[j]
                hess[i, j] = h[i, j]
            inv = 1.0 / a[i] if power == 1.0 else a[i] ** (-power)
            grad[i] = s - inv
            hess[i, i] += 1.0 / (a[i] * a[i]) if power == 1.0 else power * inv / a[i]
        if not _cholesky_solve(hess, grad, chol, step):
            return False
        decrement = 0.0  # the squared Newton decrement
        for i in range(n):
            decrement += grad[i] * step[i]
        if not decrement > tol:
            break
        t = 1.0
        for i in range(n):
            if step[i] > 0.0:
                t = min(t, boundary * (a[i] / step[i]))
        while True:
            for i in range(n):
                trial[i] = a[i] - t * step[i]
            trial_value = _barrier_objective(h, trial, power)
            if trial_value <= value - decrease * t * decrement or t < min_step:
                break
            t *= 0.5
        if not trial_value < value:
            break
        for i in range(n):
            a[i] = trial[i]
        value = trial_value
    return True

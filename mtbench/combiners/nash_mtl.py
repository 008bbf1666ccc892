"""Nash-MTL: the Nash bargaining solution of the tasks' gradients."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import (
    _combine_rows,
    _frobenius,
    _projection_scale,
)
from mtbench.combiners.solvers.newton import _live_newton
from mtbench.options import Option, boolean, integer, number


def nash_mtl_weights_from_gram(
    gram: Tensor, alpha0: Tensor | None = None, max_norm: float = 0.0, rescale: bool = True, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Nash-MTL (Navon et al. 2022, eq. 4 and Algorithm 1) from the Gram matrix, mtbench's own
    solver: ``(weights, alpha)``.

    The paper's weights alpha > 0 solve G alpha = 1 / alpha (every task's share
    g_i . d = 1 / alpha_i of d = sum_i alpha_i g_i, so ||d||^2 = T). They minimise the strictly
    convex phi(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i (its gradient is
    G alpha - 1/alpha): damped Newton steps (backtracking, alpha > 0) on G / ||G||_F plus
    1e-8 times its diagonal (``NASH_RIDGE``, relative to each task's own length), from ``alpha0`` (the last step's, as the authors warm-start;
    None: ones) until the squared Newton decrement is below 1e-24, then mapped back to G
    (alpha / sqrt(||G||_F)). A zero gradient takes no part (weight 1, multiplying zero). The
    ridge makes a solution exist where none does (gradients with a non-negative combination
    equal to zero, e.g. exact conflicts): alpha then grows only along
    that combination, which adds nothing to d. ``alpha0`` and the returned ``alpha`` are the
    normalised problem's (the state to warm-start from).

    The authors' code (and torchjd's ``NashMTL``) approximates the same alpha by up to 20
    cvxpy/ECOS convex-concave steps, stopping when ||Gn alpha - 1/alpha|| < 1e-3; here it is
    solved to rounding, far faster (rows ``nash_mtl`` and ``nash_mtl-torchjd`` of
    ``scripts/bench_solvers.py``).

    Scale: ``rescale`` (mtbench's) multiplies d by 1^T G alpha / alpha^T G alpha, making it the
    projection of the baseline's sum onto Nash-MTL's direction (T g for T equal gradients g);
    ``rescale=False``: the paper's alpha. ``max_norm > 0``: d is then scaled down to that norm
    when longer (the authors' code: 1.0, on the paper's d).
    """
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "nash_mtl")
    n_tasks = g.shape[0]
    fro = _frobenius(g)
    if not fro > 0:
        return torch.ones(n_tasks, dtype=torch.float64), torch.ones(n_tasks, dtype=torch.float64)
    alpha, live = _live_newton(g, alpha0, max_iter, 1.0)
    w = alpha / math.sqrt(fro)
    w[~live] = 1.0
    if rescale:
        w = w * _projection_scale(g, w)
    if max_norm > 0:
        norm = math.sqrt(max(float(w @ g @ w), 0.0))
        if norm > max_norm:
            w = w * (max_norm / norm)
    return torch.from_numpy(w), torch.from_numpy(alpha)


def nash_mtl(grads: Tensor, max_norm: float = 0.0, rescale: bool = True) -> Tensor:
    """Nash-MTL of the rows of ``grads`` (see :func:`nash_mtl_weights_from_gram`)."""
    return _combine_rows(grads, "nash_mtl", lambda gram: nash_mtl_weights_from_gram(gram, None, max_norm, rescale)[0])


class NashMTL(GramWeighted):
    """Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game", eq. 4 and
    Algorithm 1): weights alpha > 0 solving G alpha = 1 / alpha, every task's share of the update
    d = sum_i alpha_i g_i being g_i . d = 1 / alpha_i; recomputed every
    ``update_weights_every`` steps, reused in between, each solve warm-started from the last
    alpha (the combiner's state, saved in checkpoints).

    mtbench's own solver computes alpha (:func:`functional.nash_mtl_weights_from_gram`: damped
    Newton steps on the strictly convex function whose minimiser alpha is, to rounding, from the
    float64 Gram matrix). The authors' code, and torchjd's ``NashMTL`` that follows it,
    approximate the same alpha by up to 20 cvxpy steps stopped at a 1e-3 residual, and fail
    (negative shares) on rank-deficient Gram matrices, and take far longer (rows ``nash_mtl``
    and ``nash_mtl-torchjd`` of ``scripts/bench_solvers.py``; the tests compare the two where
    torchjd's iterations converge).

    Scale: the paper's d has ||d||^2 = T whatever the gradients' lengths; ``rescale: true``
    multiplies it by 1^T G alpha / alpha^T G alpha (the projection of the baseline's sum onto
    Nash-MTL's direction: T g for T equal gradients g); ``rescale: false``: the paper's.
    ``max_norm`` > 0 scales the update down to that norm when longer (the authors' code uses
    1.0; here 0 = off, since clipping changes the scale; ``combiner=clip`` is mtbench's).
    """

    name = "nash_mtl"
    style = ("#9edae5", "2")
    options = {
        **GramWeighted.level_default("representation"),
        "max_norm": Option(
            0.0, "clip the update to this norm (>= 0; 0: off; the authors' code uses 1.0)", number(minimum=0)
        ),
        "update_weights_every": Option(1, "recompute the weights every this many steps (>= 1)", integer(minimum=1)),
        "rescale": Option(
            True, "scale the update to the projection of the baseline's sum on it (the baseline's scale)", boolean()
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.steps = 0
        self.alpha: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        if self.weights is None or self.steps % self.update_weights_every == 0:
            self.weights, self.alpha = nash_mtl_weights_from_gram(
                gram, self.alpha, max_norm=self.max_norm, rescale=self.rescale
            )
        self.steps += 1
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alpha": None if self.alpha is None else self.alpha.clone(),
            "weights": None if self.weights is None else self.weights.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        alpha, weights = state.get("alpha"), state.get("weights")
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).clone()
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).clone()

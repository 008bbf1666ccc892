"""FairGrad: alpha-fair allocation of the update's progress among the tasks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.combiners.rows import (
    _check_option,
    _combine_rows,
    _frobenius,
    _projection_scale,
)
from mtbench.combiners.solvers.newton import _live_newton
from mtbench.options import Option, boolean, integer, number

FAIRGRAD_SOLVERS = ("newton", "scipy")


def fairgrad_weights_from_gram(
    gram: Tensor,
    alpha: float = 1.0,
    max_iters: int | None = None,
    rescale: bool = True,
    solver: str = "newton",
    start: Tensor | None = None,
) -> Tensor:
    """FairGrad (Ban & Ji 2024, eq. 4): w > 0 solving G w = w^(-1/alpha).

    ``solver="newton"`` (the default; mtbench's own): w minimises the strictly convex
    1/2 w^T G w - sum_i psi(w_i) with psi'(w) = w^(-1/alpha) (psi = log for alpha = 1, where
    FairGrad's equation is Nash-MTL's), whose gradient G w - w^(-1/alpha) vanishes exactly at
    FairGrad's weights: damped Newton steps on G / ||G||_F (plus Nash-MTL's ridge, 1e-8 of each
    task's own squared length) until the squared Newton decrement is below 1e-24, at most
    ``max_iters`` (None: 100) steps, from ``start`` (the normalised problem's weights of a
    previous solve, as :func:`fairgrad_state` returns them; None: ones), then mapped back to G
    (times ||G||_F^(-alpha / (1 + alpha))). A zero gradient takes no part (weight 1, multiplying
    zero); the ridge gives exact conflicts a finite solution. ``solver="scipy"``: torchjd's
    ``FairGradWeighting(alpha, max_iters)`` (scipy's bounded least squares on the residual
    G w - w^(-1/alpha), from uniform weights; the authors' code), far slower (rows ``fairgrad``
    and ``fairgrad-scipy`` of ``scripts/bench_solvers.py``); the two agree where scipy's
    iterations converge.

    The paper's weights carry their own length (for equal agreeing gradients of norm n,
    w_i = (T n^2)^(-alpha / (1 + alpha))); with ``rescale`` (mtbench's scale) the combination is
    multiplied by s = 1^T G w / w^T G w, which makes it the projection of the baseline's sum
    onto FairGrad's direction (exactly the sum for equal agreeing gradients). ``rescale=False``:
    the paper's raw weights. A zero Gram matrix gives ones (the combination is zero anyway)."""
    return fairgrad_state(gram, alpha, max_iters, rescale, solver, start)[0]


def fairgrad_state(
    gram: Tensor,
    alpha: float = 1.0,
    max_iters: int | None = None,
    rescale: bool = True,
    solver: str = "newton",
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`fairgrad_weights_from_gram` and the normalised problem's solution (the next
    solve's ``start``; None for the scipy solver)."""
    from mtbench.combiners.jd import gram_np64, weighting

    _check_option(
        "fairgrad",
        "alpha",
        alpha,
        isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0,
        "a finite number > 0",
    )
    _check_option("fairgrad", "solver", solver, solver in FAIRGRAD_SOLVERS, "one of " + ", ".join(FAIRGRAD_SOLVERS))
    g = gram_np64(gram, "fairgrad")
    n_tasks = g.shape[0]
    if not float(g.diagonal().max()) > 0:
        return torch.ones(n_tasks, dtype=torch.float64), None
    state = None
    if solver == "scipy":
        jd = weighting("FairGradWeighting", "fairgrad", alpha=float(alpha), max_iters=max_iters)
        w = jd(torch.from_numpy(g)).to(torch.float64).numpy()
    else:
        power = 1.0 / float(alpha)
        x, live = _live_newton(g, start, 100 if max_iters is None else int(max_iters), power)
        state = torch.from_numpy(x)
        w = x * _frobenius(g) ** (-1.0 / (1.0 + power))
        w[~live] = 1.0
    return torch.from_numpy(w * _projection_scale(g, w) if rescale else w), state


def fairgrad(
    grads: Tensor, alpha: float = 1.0, max_iters: int | None = None, rescale: bool = True, solver: str = "newton"
) -> Tensor:
    """FairGrad of the rows of ``grads`` (see :func:`fairgrad_weights_from_gram` for the solvers
    and the scale)."""
    return _combine_rows(
        grads,
        "fairgrad",
        fairgrad_weights_from_gram,
        alpha=alpha,
        max_iters=max_iters,
        rescale=rescale,
        solver=solver,
    )


class FairGrad(WarmStarted):
    """FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", eq. 4):
    weights w > 0 solving G w = w^(-1/alpha), so that every task's progress g_i . d of the update
    d = sum_i w_i g_i is alpha-fair (alpha -> 0: the mean; 1: proportional fairness; large:
    max-min).

    mtbench's own solver computes the weights (``solver: newton``, :func:`functional.fairgrad_weights_from_gram`:
    damped Newton steps on the strictly convex function whose minimiser they are, from the
    float64 Gram matrix, each solve warm-started from the last step's, which is the
    combiner's state, saved in checkpoints); ``solver: scipy`` is torchjd's
    ``FairGradWeighting(alpha)`` (scipy's bounded least squares, as the authors' code), the same
    weights where its iterations converge, far slower (docs/performance.md). Scale: the
    paper's weights carry their own length (equal agreeing gradients of norm n get
    w_i = (T n^2)^(-alpha/(1+alpha))); with ``rescale: true`` d is multiplied by
    1^T G w / w^T G w, which makes it the projection of the baseline's sum onto FairGrad's
    direction (exactly the sum for equal agreeing gradients); ``rescale: false``: the paper's
    (and torchjd's) d. Options: those of :class:`GramWeighted` (``level`` defaulting to
    ``representation``), ``alpha`` > 0, ``max_iters``, ``rescale``, ``solver``.
    """

    name = "fairgrad"
    style = ("#ff9896", "8")
    options = {
        **GramWeighted.level_default("representation"),
        "alpha": Option(
            1.0, "the fairness parameter alpha (> 0; 1: proportional fairness)", number(minimum=0, min_open=True)
        ),
        "max_iters": Option(
            None,
            "iterations of the solver; null: 100 Newton steps (newton), scipy's default 100 T (scipy)",
            integer(minimum=1, optional=True),
        ),
        "rescale": Option(
            True, "scale the update to the projection of the baseline's sum on it (the baseline's scale)", boolean()
        ),
        "solver": Option(
            "newton",
            "newton: mtbench's damped Newton solve (warm-started); scipy: torchjd's least squares",
            one_of(*FAIRGRAD_SOLVERS),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        # a missing solver fails here
        fairgrad_weights_from_gram(torch.eye(1, dtype=torch.float64), alpha=self.alpha, solver=self.solver)

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.start = fairgrad_state(
            gram, self.alpha, self.max_iters, self.rescale, self.solver, start=self.start
        )
        return weights

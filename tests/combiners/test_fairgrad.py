"""FairGrad (mtbench/combiners/fairgrad.py): the Newton solve of its equation, the rescaled form, no solution."""

from __future__ import annotations

import pytest
import torch
import torchjd.aggregation as jd
from gram_matrices import MATS, close

from mtbench.combiners import functional as F


def fairgrad_residual(J: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    """max_i |(G w)_i - w_i^(-1/alpha)| / w_i^(-1/alpha): how far w is from FairGrad's equation."""
    target = w.pow(-1.0 / alpha)
    return float(((J @ J.T @ w - target) / target).abs().max())


def test_fairgrad_rescaled_is_the_baseline_sum_projected_on_its_direction():
    J = MATS["random"]
    raw = jd.FairGrad(alpha=1.0)(J)
    direction = raw / raw.norm()
    close(F.fairgrad(J), (J.sum(0) @ direction) * direction)
    # every task progresses along FairGrad's direction (the alpha-fair condition g_i . d > 0)
    assert bool((J @ F.fairgrad(J) > 0).all())


def test_fairgrad_without_a_solution():
    """(g, -g, h), a zero task and 8 gradients in 3 dimensions (a positive combination of them is
    zero) have no finite w > 0 with G w = w^(-1/alpha): the weights stay finite and the result
    is finite, with either solver."""
    for name in ("opposing", "zero_task", "T_gt_D"):
        for solver in ("newton", "scipy"):
            out = F.fairgrad(MATS[name], solver=solver)
            assert bool(torch.isfinite(out).all()), (name, solver)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_newton_solves_the_equation(alpha):
    """mtbench's Newton solve meets G w = w^(-1/alpha) within 1e-6 (the ridge's effect) on every matrix that
    has a solution, and equals torchjd's scipy solve where that converges; on the task 1e4 times
    larger scipy's least squares stops far from the solution (its residual is documented here)."""
    for name in ("random", "agreeing", "one_1e4_larger"):
        J = MATS[name]
        ours = F.fairgrad_weights_from_gram(J @ J.T, alpha=alpha, rescale=False)
        assert fairgrad_residual(J, ours, alpha) <= 1e-6, name
        theirs = jd.FairGrad(alpha=alpha).gramian_weighting(J @ J.T)
        if fairgrad_residual(J, theirs, alpha) <= 1e-6:
            close(ours @ J, theirs @ J)
        else:
            assert name == "one_1e4_larger", name
    J = MATS["one_1e4_larger"]
    assert fairgrad_residual(J, jd.FairGrad(alpha=1.0).gramian_weighting(J @ J.T), 1.0) > 1e-3


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_compiled_newton_is_the_numpy_one(power, monkeypatch):
    """Below 64 tasks Nash-MTL's and FairGrad's Newton iteration runs compiled
    (:func:`loops.fair_newton`); its solution is the NumPy loop's (the path from 64 tasks on,
    and where a Hessian does not factorise) on 40 tasks in 512 dimensions and on the
    adversarial matrices, and meets the equation (Gn + ridge) x = x^(-power) to 1e-7 (both
    stop where a Newton step no longer decreases the objective beyond its rounding)."""
    import numpy as np

    import mtbench.combiners.solvers.newton_compiled as loops

    gen = torch.Generator().manual_seed(12)
    t40 = 0.3 * torch.randn(512, generator=gen, dtype=torch.float64) + torch.randn(
        40, 512, generator=gen, dtype=torch.float64
    )
    for name, J in {**MATS, "t40": t40}.items():
        if name in ("opposing", "T_gt_D", "zero_task"):  # (no solution without the ridge; a zero row has no part)
            continue
        G = J @ J.T
        compiled = torch.from_numpy(F._fair_newton(G.numpy(), None, 100, power))
        h = (G / torch.linalg.norm(G)).numpy()
        h = h + F.NASH_RIDGE * np.diag(h.diagonal())
        x = compiled.numpy()
        assert np.abs((h @ x) * x**power - 1).max() <= 1e-7, name
        monkeypatch.setattr(loops, "fair_newton", lambda *a: False)  # as if a Hessian did not factorise
        numpy_loop = torch.from_numpy(F._fair_newton(G.numpy(), None, 100, power))
        monkeypatch.undo()
        torch.testing.assert_close(compiled, numpy_loop, rtol=1e-7, atol=0)

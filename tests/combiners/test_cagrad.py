"""CAGrad (mtbench/combiners/cagrad.py): optimality of its update against the primal problem (many
tasks and singular pieces included), the Pareto front, warm starts."""

from __future__ import annotations

import pytest
import torch
import torchjd.aggregation as jd
from gram_matrices import MATS, close

from mtbench.combiners import functional as F


def cagrad_primal_value(J: torch.Tensor, c: float) -> float:
    """CAGrad's primal problem solved independently of either dual solver: max_d min_i g_i . d
    over the ball ||d - g0|| <= c ||g0|| (a second-order cone program, cvxpy's CLARABEL; solved
    on the gradients scaled to a largest norm of 1, where its absolute tolerances apply)."""
    import cvxpy as cp

    unit = float(J.norm(dim=1).max())
    J = J / unit
    A = J.numpy()
    g0 = A.mean(0)
    d, z = cp.Variable(A.shape[1]), cp.Variable()
    cp.Problem(cp.Maximize(z), [A @ d >= z, cp.norm(d - g0) <= c * float(torch.linalg.norm(J.mean(0)))]).solve(
        cp.CLARABEL
    )
    return float(z.value) * unit**2


def cagrad_update(J: torch.Tensor, c: float, **kwargs) -> torch.Tensor:
    """The paper's d (mtbench's result times (1 + c) / T)."""
    return F.cagrad(J, c=c, **kwargs) * ((1 + c) / J.shape[0])


CAGRAD_FRONT = ("opposing", "zero_task")  # the dual's optimum at g_w = 0 for every c here


def test_cagrad_other_c_and_aligned_mtl_other_scales():
    J = MATS["random"]
    for c in (0.0, 0.9):
        close(F.cagrad(J, c=c, solver="cvxpy"), jd.CAGrad(c=c)(J) * (5 / (1 + c)))
    for mode in ("median", "rmse"):
        close(F.aligned_mtl(J, scale_mode=mode), jd.AlignedMTL(scale_mode=mode)(J) * 5)
    close(F.fairgrad(J, alpha=2.0, rescale=False), jd.FairGrad(alpha=2.0)(J))


@pytest.mark.parametrize("matrix", [m for m in MATS if m not in CAGRAD_FRONT])
@pytest.mark.parametrize("c", [0.4, 0.9, 1.5])
def test_cagrad_is_optimal(matrix, c):
    """mtbench's solve is exact: its d lies on the ball and its worst task's progress
    min_i g_i . d equals the dual objective at its weights (a zero duality gap certifies both)
    and the primal optimum solved independently; torchjd's CLARABEL dual solve is within 1e-3
    of it and never better. (T > D with c = 1.5 is on the Pareto front: below.)"""
    J = MATS[matrix]
    g0 = J.mean(0)
    sqrt_phi = c * float(g0.norm())
    d = cagrad_update(J, c)
    scale = float(J.norm(dim=1).max()) * float(g0.norm())
    worst = float((J @ d).min())
    primal = cagrad_primal_value(J, c)
    if matrix == "T_gt_D" and c == 1.5:  # on the front: the optimum is 0, d the dual-cone projection
        assert abs(primal) <= 1e-8 * scale and worst >= -1e-6 * scale
        return
    assert abs(float((d - g0).norm()) - sqrt_phi) <= 1e-9 * sqrt_phi
    _, w = F.cagrad_state(J @ J.T, c)
    g_w = w @ J
    dual = float(g_w @ g0) + sqrt_phi * float(g_w.norm())
    assert abs(worst - dual) <= 1e-12 * scale, (worst, dual)
    assert abs(worst - primal) <= 1e-7 * scale, (worst, primal)
    theirs = jd.CAGrad(c=c)(J)
    if matrix == "one_1e4_larger":  # ||g_w|| < its norm_eps: torchjd returns zero
        assert float(theirs.norm()) == 0.0 and worst > 0  # ours helps every task
        return
    assert float((J @ theirs).min()) <= worst + 1e-12 * scale
    close(d, theirs, rtol=1e-3)


@pytest.mark.parametrize("matrix", CAGRAD_FRONT)
@pytest.mark.parametrize("c", [0.4, 1.5])
def test_cagrad_on_the_pareto_front_takes_the_optimal_update_nearest_the_mean(matrix, c):
    """A zero task, or an exact conflict: the primal optimum is 0 (no update helps every task),
    every d of the ball with g_i . d >= 0 is optimal, and mtbench takes the nearest to g0, its
    projection onto the dual cone (torchjd: zero)."""
    J = MATS[matrix]
    g0 = J.mean(0)
    scale = float(J.norm(dim=1).max()) * float(g0.norm())
    assert abs(cagrad_primal_value(J, c)) <= 1e-8 * scale
    d = cagrad_update(J, c)
    close(d, F.dualproj(J) / J.shape[0])
    assert float((J @ d).min()) >= -1e-6 * scale
    assert float((d - g0).norm()) <= c * float(g0.norm())
    assert float(jd.CAGrad(c=c)(J).norm()) == 0.0


def test_cagrad_is_exact_on_random_problems_and_scale_invariant():
    """40 random problems (T from 2 to 30, T > D among them, mixed scales, c from 0.1 to 2):
    the worst task's progress equals the independently solved primal optimum; scaling every
    gradient by 1e-4 scales the update by 1e-4 (torchjd returns zero once the Gram matrix's
    trace is below its norm_eps, 1e-4)."""
    gen = torch.Generator().manual_seed(7)
    for k in range(40):
        T = int(torch.randint(2, 31, (1,), generator=gen))
        D = int(torch.randint(2, 40, (1,), generator=gen))
        c = [0.1, 0.4, 0.9, 1.0, 2.0][k % 5]
        J = torch.randn(T, D, generator=gen, dtype=torch.float64) * 10.0 ** float(
            torch.randint(-3, 4, (1,), generator=gen)
        )
        J = J + torch.randn(D, generator=gen, dtype=torch.float64) * float(J.norm(dim=1).mean()) * (k % 3) / 3
        scale = float(J.norm(dim=1).max()) * float(J.mean(0).norm())
        worst = float((J @ cagrad_update(J, c)).min())
        assert abs(worst - cagrad_primal_value(J, c)) <= 1e-6 * scale, (k, T, D, c)
    J = MATS["random"]
    close(F.cagrad(J * 1e-4), F.cagrad(J) * 1e-4, rtol=1e-9)
    assert float(jd.CAGrad(c=0.4)(J * 1e-4).norm()) == 0.0


def test_cagrad_is_exact_with_many_tasks_and_duplicate_gradients():
    """80 tasks (a shared component), and 12 tasks with duplicated gradients (the pieces' KKT
    systems singular: their least-squares solutions): the worst task's progress equals the
    independently solved primal optimum, cold and warm-started from a nearby problem."""
    gen = torch.Generator().manual_seed(3)
    many = torch.randn(80, 100, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
        100, generator=gen, dtype=torch.float64
    )
    twins = torch.randn(12, 30, generator=gen, dtype=torch.float64) + torch.randn(
        30, generator=gen, dtype=torch.float64
    )
    twins[1], twins[3], twins[5] = twins[0], twins[2], twins[4]
    for J in (many, twins):
        for c in (0.4, 0.9):
            scale = float(J.norm(dim=1).max()) * float(J.mean(0).norm())
            primal = cagrad_primal_value(J, c)
            moved = J + 0.05 * torch.randn(J.shape, generator=gen, dtype=torch.float64)
            _, start = F.cagrad_state(moved @ moved.T, c)
            for s in (None, start):
                weights, _ = F.cagrad_state(J @ J.T, c, start=s)
                d = (weights @ J) * ((1 + c) / J.shape[0])  # the paper's d (as cagrad_update)
                assert abs(float((J @ d).min()) - primal) <= 1e-7 * scale, (J.shape, c, s is None)


def test_cagrad_any_start_gives_the_certified_solution():
    """A start of any support (even every task, or one vertex) gives the cold solve's result:
    only a certified solution is returned. (The warm start as state: test_warm_start_and_state.)"""
    J = MATS["random"]
    cold, cold_state = F.cagrad_state(J @ J.T)
    assert cold_state is not None
    for start in (torch.ones(5, dtype=torch.float64), torch.eye(5, dtype=torch.float64)[2]):
        torch.testing.assert_close(F.cagrad_state(J @ J.T, start=start)[0], cold, rtol=1e-10, atol=0)

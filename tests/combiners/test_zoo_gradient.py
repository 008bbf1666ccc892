"""The gradient-level methods of the Gram matrix (upgrad, cagrad, nash_mtl, imtl_g, aligned_mtl,
dualproj, fairgrad, config, gradvac) against torchjd's aggregators on the same matrices, adversarial
ones included, with each documented scale factor; their scale, options, state and the command
line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchjd.aggregation as jd
from conftest import TINY, run_cli, run_dir
from omegaconf import OmegaConf
from torchjd.linalg import QuadprogProjector

from mtbench.combiners import COMBINERS, GramWeighted, build_combiner
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError

NEW = ["upgrad", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl", "dualproj", "fairgrad", "config", "gradvac"]


def matrices() -> dict[str, torch.Tensor]:
    """[T, D] float64 stacks: random, and the adversarial cases."""
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    g = torch.randn(12, generator=gen, dtype=torch.float64)
    h = torch.randn(12, generator=gen, dtype=torch.float64)
    large = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    large[2] *= 1e4
    zero = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    zero[1] = 0.0
    return {
        "random": rand,
        "agreeing": torch.stack([g, g, g]),
        "conflict": torch.stack([g, -g, h]),
        "zero_task": zero,
        "one_1e4_larger": large,
        "T_gt_D": torch.randn(8, 3, generator=gen, dtype=torch.float64),
    }


MATS = matrices()


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-6, floor: float = 1e-300) -> None:
    """Equal at float32 rounding or better, relative to the larger of the two results' norms
    (and of ``floor``, e.g. the plain sum's norm, for results that are nearly zero)."""
    scale = max(float(ref.norm()), float(ours.norm()), floor)
    err = float((ours - ref).norm())
    assert err <= rtol * scale, (
        f"|ours - ref| = {err:.3g}, |ref| = {float(ref.norm()):.3g}, |ours| = {float(ours.norm()):.3g}"
    )


# (our function, torchjd's aggregator, the documented factor ours / torchjd's)
STATELESS = {
    # torchjd with the ridge 1e-9 of ours (its default 1e-4 is a 1e-4 regularisation)
    "upgrad": (F.upgrad, lambda T: jd.UPGrad(projector=QuadprogProjector(reg_eps=1e-9)), lambda T: T),
    "dualproj": (F.dualproj, lambda T: jd.DualProj(projector=QuadprogProjector(reg_eps=1e-9)), lambda T: T),
    "imtl_g": (F.imtl_g, lambda T: jd.IMTLG(), lambda T: T),
    "aligned_mtl": (F.aligned_mtl, lambda T: jd.AlignedMTL(), lambda T: T),
    # (the bridge to torchjd's solver; mtbench's own: test_cagrad_is_optimal and below)
    "cagrad_cvxpy": (lambda J: F.cagrad(J, solver="cvxpy"), lambda T: jd.CAGrad(c=0.4), lambda T: T / 1.4),
    "config": (F.config, lambda T: jd.ConFIG(), lambda T: 1.0),
    # (the bridge to torchjd's solver; mtbench's own: test_fairgrad_newton_solves_the_equation)
    "fairgrad_raw": (
        lambda J: F.fairgrad(J, rescale=False, solver="scipy"),
        lambda T: jd.FairGrad(alpha=1.0),
        lambda T: 1.0,
    ),
}


#: FairGrad on a zero task or an exact conflict has no finite solution of G w = w^(-1/alpha):
#: test_fairgrad_without_a_solution
PAIRS = [(m, x) for m in STATELESS for x in MATS if not (m == "fairgrad_raw" and x in ("zero_task", "conflict"))]


@pytest.mark.parametrize("method, matrix", PAIRS)
def test_equals_torchjd_times_the_documented_factor(method, matrix):
    ours_fn, ref_agg, factor = STATELESS[method]
    J = MATS[matrix]
    T = J.shape[0]
    if method in ("upgrad", "dualproj") and matrix == "one_1e4_larger":
        # torchjd's QP on the raw Gram matrix: its ridge drowns the small tasks; the same
        # projections of the unit rows (same dual cone), preference scaled by the norms
        n = J.norm(dim=1)
        agg = (jd.UPGrad if method == "upgrad" else jd.DualProj)(
            pref_vector=n / T, projector=QuadprogProjector(reg_eps=1e-9)
        )
        close(ours_fn(J), agg(J / n[:, None]) * T)
        return
    close(ours_fn(J), ref_agg(T)(J) * factor(T), floor=float(J.sum(0).norm()))


def test_cagrad_other_c_and_aligned_mtl_other_scales():
    J = MATS["random"]
    for c in (0.0, 0.9):
        close(F.cagrad(J, c=c, solver="cvxpy"), jd.CAGrad(c=c)(J) * (5 / (1 + c)))
    for mode in ("median", "rmse"):
        close(F.aligned_mtl(J, scale_mode=mode), jd.AlignedMTL(scale_mode=mode)(J) * 5)
    close(F.fairgrad(J, alpha=2.0, rescale=False), jd.FairGrad(alpha=2.0)(J))


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


CAGRAD_FRONT = ("conflict", "zero_task")  # the dual's optimum at g_w = 0 for every c here


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


def test_cagrad_compiled_candidate_is_the_numpy_one():
    """Below 64 tasks each candidate of CAGrad's dual solve (the piece's root and its
    certificate) is one compiled call (:func:`loops.cagrad_candidate`); on random supports of
    random problems (T from 3 to 40, shared components) it gives the NumPy code's verdict, root
    and weights (to rounding), and hands a singular piece to it (code 3)."""
    import numpy as np

    from mtbench.combiners.solvers.cagrad_dual_compiled import cagrad_candidate

    rng = np.random.default_rng(5)
    verdicts = set()
    for trial in range(200):
        n, dim = int(rng.integers(3, 41)), int(rng.integers(2, 60))
        J = rng.standard_normal((n, dim)) + (trial % 3) * rng.standard_normal(dim)
        g = J @ J.T
        g = g / np.trace(g)
        a = g.mean(axis=1)
        n0 = float(a.mean())
        s = 0.4 * np.sqrt(n0)
        support = sorted(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False).tolist())
        lo, hi = (0.0, 1.0 / s) if trial % 2 else (0.0, 0.1 / s)
        args = (g, a, s, n0)
        code, t, w_c, negative, violated = cagrad_candidate(*args, np.array(support), lo, hi, 1e-10, 1e-13)
        ref = F._cagrad_candidate_np(*args, support, lo, hi, g.diagonal())
        assert code == ref[0], trial
        verdicts.add(code)
        if code:
            assert abs(t - ref[1]) <= 1e-10 * ref[1]
            np.testing.assert_allclose(w_c, ref[2], rtol=1e-8, atol=1e-12)
            assert np.array_equal(negative, ref[3]) and np.array_equal(violated, ref[4])
    assert verdicts == {0, 1, 2}
    J = rng.standard_normal((4, 6))
    J[1] = J[0]
    g = J @ J.T / np.trace(J @ J.T)
    a = g.mean(axis=1)
    assert cagrad_candidate(g, a, 0.1, float(a.mean()), np.array([0, 1]), 0.0, 1e3, 1e-10, 1e-13)[0] == 3


def test_cagrad_any_start_gives_the_certified_solution():
    """A start of any support (even every task, or one vertex) gives the cold solve's result:
    only a certified solution is returned. (The warm start as state: test_warm_start_and_state.)"""
    J = MATS["random"]
    cold, cold_state = F.cagrad_state(J @ J.T)
    assert cold_state is not None
    for start in (torch.ones(5, dtype=torch.float64), torch.eye(5, dtype=torch.float64)[2]):
        torch.testing.assert_close(F.cagrad_state(J @ J.T, start=start)[0], cold, rtol=1e-10, atol=0)


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
    for name in ("conflict", "zero_task", "T_gt_D"):
        for solver in ("newton", "scipy"):
            out = F.fairgrad(MATS[name], solver=solver)
            assert bool(torch.isfinite(out).all()), (name, solver)


def fairgrad_residual(J: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    """max_i |(G w)_i - w_i^(-1/alpha)| / w_i^(-1/alpha): how far w is from FairGrad's equation."""
    target = w.pow(-1.0 / alpha)
    return float(((J @ J.T @ w - target) / target).abs().max())


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
        if name in ("conflict", "T_gt_D", "zero_task"):  # (no solution without the ridge; a zero row has no part)
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


@pytest.mark.parametrize(
    "name, state_fn, rtol", [("fairgrad", F.fairgrad_state, 1e-9), ("cagrad", F.cagrad_state, 1e-12)]
)
def test_warm_start_and_state(name, state_fn, rtol):
    """A solve from the last step's state gives the cold solve's weights; the combiner keeps that
    state in its state_dict (a resumed run takes the same iterations)."""
    J = MATS["random"]
    moved = J + 0.1 * torch.randn(J.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, state = state_fn(moved @ moved.T)
    cold, _ = state_fn(J @ J.T)
    warm, _ = state_fn(J @ J.T, start=state)
    torch.testing.assert_close(warm, cold, rtol=rtol, atol=0)
    comb = COMBINERS[name](5)
    comb.gram_weights(moved @ moved.T, None)
    saved = comb.state_dict()
    torch.testing.assert_close(saved["start"], state, rtol=0, atol=0)
    other = COMBINERS[name](5)
    other.load_state_dict(saved)
    torch.testing.assert_close(other.gram_weights(J @ J.T, None), comb.gram_weights(J @ J.T, None), rtol=0, atol=0)


@pytest.mark.parametrize("matrix", list(MATS))
def test_gradvac_equals_torchjd_over_steps_with_the_same_draws(matrix):
    """Three successive steps, the EMA carried: torchjd draws from the global generator, ours from
    the given one, seeded alike."""
    J = MATS[matrix]
    ref = jd.GradVac(beta=0.5)
    phi = None
    for k in range(3):
        Jk = J * (1 + 0.3 * k) + 0.05 * k
        torch.manual_seed(10 + k)
        expected = ref(Jk)
        gen = torch.Generator().manual_seed(10 + k)
        weights, phi = F.gradvac_weights_from_gram(Jk @ Jk.T, phi, beta=0.5, generator=gen)
        close(weights @ Jk, expected)


def test_gradvac_at_many_tasks_equals_torchjd():
    """80 tasks on 30 dimensions (many corrections per visit), two steps with the EMA carried."""
    J = torch.randn(80, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = jd.GradVac(beta=0.5)
    phi = None
    for k in range(2):
        Jk = J + 0.1 * k
        torch.manual_seed(20 + k)
        expected = ref(Jk)
        weights, phi = F.gradvac_weights_from_gram(Jk @ Jk.T, phi, generator=torch.Generator().manual_seed(20 + k))
        close(weights @ Jk, expected)


def test_gradvac_changes_conflicting_gradients_and_its_draws_come_from_the_generator():
    J = MATS["conflict"]
    a = F.gradvac(J, generator=torch.Generator().manual_seed(1))
    b = F.gradvac(J, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, J.sum(0))  # the conflicting pair was corrected
    # a warm EMA target raises even agreeing-but-not-aligned pairs
    rand = MATS["random"]
    _, phi = F.gradvac_weights_from_gram(rand @ rand.T, generator=torch.Generator().manual_seed(0))
    phi_high = torch.full_like(phi, 0.9)
    w, _ = F.gradvac_weights_from_gram(rand @ rand.T, phi_high, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(w, torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("matrix", ["random", "agreeing", "one_1e4_larger", "zero_task"])
def test_nash_mtl_solves_the_bargaining_equation(matrix):
    """The paper's alpha (rescale=False): every task's share g_i . d equals 1 / alpha_i (a zero
    task has none); ||d||^2 = T."""
    J = MATS[matrix]
    G = J @ J.T
    w, _ = F.nash_mtl_weights_from_gram(G, rescale=False)
    shares = G @ w
    live = J.norm(dim=1) > 0
    assert torch.allclose(w[live] * shares[live], torch.ones(int(live.sum()), dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(float(w @ G @ w) - int(live.sum())) < 1e-5


def test_nash_mtl_equals_torchjd_where_torchjds_iterations_converge():
    """torchjd's NashMTL (the authors' algorithm) converges on a well-conditioned matrix: the
    same weights. (On the adversarial ones it stops early, with negative shares.) Warm-started
    steps too."""
    J = MATS["random"]
    ref = jd.NashMTL(n_tasks=5, max_norm=0.0)
    alpha = None
    for k in range(3):
        Jk = J * (1 + 0.5 * k) + 0.1 * k
        expected = ref(Jk)
        w, alpha = F.nash_mtl_weights_from_gram(Jk @ Jk.T, alpha, rescale=False)
        close(w @ Jk, expected, rtol=1e-6)


def test_nash_mtl_rescaled_and_clipped():
    J = MATS["random"]
    raw = F.nash_mtl(J, rescale=False)
    direction = raw / raw.norm()
    close(F.nash_mtl(J), (J.sum(0) @ direction) * direction)
    clipped = F.nash_mtl(J * 10, max_norm=1.0)
    assert abs(float(clipped.norm()) - 1.0) < 1e-9
    close(clipped / clipped.norm(), direction)


def test_nash_mtl_without_a_solution_stays_finite_and_adds_nothing_along_the_null_combination():
    for name in ("conflict", "T_gt_D"):
        J = MATS[name]
        out = F.nash_mtl(J)
        assert bool(torch.isfinite(out).all()), name
    g = MATS["agreeing"][0]
    assert float(F.nash_mtl(torch.stack([g, -g])).norm()) < 1e-6 * float(g.norm())


ALL = {
    "upgrad": F.upgrad,
    "cagrad": F.cagrad,
    "nash_mtl": F.nash_mtl,
    "imtl_g": F.imtl_g,
    "aligned_mtl": F.aligned_mtl,
    "dualproj": F.dualproj,
    "fairgrad": F.fairgrad,
    "config": F.config,
    "gradvac": lambda J: F.gradvac(J, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("method", list(ALL))
def test_equal_agreeing_gradients_give_the_baselines_sum(method):
    """mtbench's scale: T equal gradients g give T g (the plain sum of the losses' gradients)."""
    for T in (2, 3, 7):
        g = torch.linspace(-1, 2, 9, dtype=torch.float64) * 3.0
        J = g.expand(T, -1).clone()
        close(ALL[method](J), T * g, rtol=1e-6)


@pytest.mark.parametrize("method", list(ALL))
def test_every_result_is_finite_on_the_adversarial_matrices_and_keeps_dtype(method):
    for name, J in MATS.items():
        out = ALL[method](J.float())
        assert out.dtype == torch.float32 and out.shape == J.shape[1:]
        assert bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_the_dual_cone_methods_conflict_with_no_task(method):
    for name in ("random", "conflict", "one_1e4_larger", "zero_task"):
        J = MATS[name]
        out = ALL[method](J)
        # the unit gradients' Gram matrix is regularised by 1e-9 I: every task's cosine >= -1e-8
        assert bool((J @ out >= -1e-8 * J.norm(dim=1) * out.norm()).all()), name
    # 8 gradients spanning R^3: the dual cone is {0}; the regularised solver gives nearly 0
    J = MATS["T_gt_D"]
    assert float(ALL[method](J).norm()) < 1e-2 * float(J.sum(0).norm())
    g = MATS["agreeing"][0]
    assert float(ALL[method](torch.stack([g, -g])).norm()) < 1e-12 * float(g.norm())


def test_config_has_equal_cosines_to_every_task():
    J = MATS["random"]
    out = F.config(J)
    cos = (J @ out) / (J.norm(dim=1) * out.norm())
    assert float(cos.max() - cos.min()) < 1e-9 and float(cos.min()) > 0


def test_imtl_g_has_equal_projections_on_the_unit_gradients():
    J = MATS["random"]
    out = F.imtl_g(J)
    proj = (J @ out) / J.norm(dim=1)
    assert float(proj.max() - proj.min()) < 1e-9 * float(proj.abs().max())


# -- the combiners ------------------------------------------------------------------------------


def build(name: str, **options):
    return build_combiner(OmegaConf.create({"name": name, **options}), num_tasks=3)


def test_registered_after_the_papers_nine_and_gram_weighted():
    names = list(COMBINERS)
    assert names[:9] == [
        "baseline",
        "clip",
        "gradpenalty",
        "mgda",
        "pcgrad",
        "gradnorm",
        "random_graddrop",
        "graddrop",
        "gradnorm_graddrop",
    ]
    assert [n for n in names[9:] if n in NEW] == NEW  # after the nine (with any other additions)
    for name in NEW:
        cls = COMBINERS[name]
        assert issubclass(cls, GramWeighted) and cls.style is not None
        assert cls.defaults["level"] == "representation"
    styles = [COMBINERS[n].style for n in names]
    assert len(set(styles)) == len(styles)


@pytest.mark.parametrize(
    "name, option, value, message",
    [
        ("cagrad", "c", -0.1, "combiner.c must be a finite number >= 0 (got -0.1)"),
        ("fairgrad", "alpha", 0, "combiner.alpha must be a finite number > 0 (got 0)"),
        ("fairgrad", "alpha", -1.0, "combiner.alpha must be a finite number > 0 (got -1.0)"),
        ("gradvac", "beta", 1.5, "combiner.beta must be a finite number >= 0 and <= 1 (got 1.5)"),
        ("nash_mtl", "max_norm", -1.0, "combiner.max_norm must be a finite number >= 0 (got -1.0)"),
        ("nash_mtl", "update_weights_every", 0, "combiner.update_weights_every must be an integer >= 1 (got 0)"),
        (
            "aligned_mtl",
            "scale_mode",
            "max",
            "combiner.scale_mode='max' is not allowed for combiner=aligned_mtl; choose one of: min, median, rmse",
        ),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(name, option, value, message):
    with pytest.raises(MtbenchError) as err:
        build(name, **{option: value})
    assert str(err.value) == message


def test_a_missing_solver_is_one_line_naming_the_package_and_extra(monkeypatch):
    import importlib.util

    from mtbench.combiners import jd as bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a))
    with pytest.raises(MtbenchError) as err:
        build("upgrad")
    text = str(err.value)
    assert "\n" not in text and "quadprog" in text and "mtbench[zoo]" in text
    with pytest.raises(MtbenchError, match="quadprog") as err:  # the pivoting's fallback too
        F._quadprog_projector("upgrad")
    assert "\n" not in str(err.value) and "mtbench[zoo]" in str(err.value)
    assert bridge.NEEDS["CAGradWeighting"] == ("cvxpy", "clarabel")
    build("nash_mtl")  # mtbench's own solver: needs none


def test_gradvac_state_resumes_to_the_same_weights():
    gen = torch.Generator().manual_seed(0)
    grams = [(lambda J: J @ J.T)(torch.randn(3, 7, generator=gen, dtype=torch.float64)) for _ in range(3)]

    class S:  # the part of a Step the weights read
        def __init__(self, seed):
            self.cpu_generator = torch.Generator().manual_seed(seed)

    a = build("gradvac", beta=0.3)
    a.gram_weights(grams[0], S(0))
    saved = a.state_dict()
    ref = [a.gram_weights(grams[k], S(k)) for k in (1, 2)]
    b = build("gradvac", beta=0.3)
    b.load_state_dict(saved)
    assert all(torch.equal(b.gram_weights(grams[k], S(k)), ref[k - 1]) for k in (1, 2))
    assert b.phi is not None and float(b.phi.abs().sum()) > 0


def test_nash_mtl_state_resumes_to_the_same_weights():
    gen = torch.Generator().manual_seed(1)
    grams = [(lambda J: J @ J.T)(torch.randn(3, 7, generator=gen, dtype=torch.float64)) for _ in range(4)]
    for every in (1, 2):
        a = build("nash_mtl", update_weights_every=every)
        a.gram_weights(grams[0], None)
        saved = a.state_dict()
        ref = [a.gram_weights(g, None) for g in grams[1:]]
        b = build("nash_mtl", update_weights_every=every)
        b.load_state_dict(saved)
        got = [b.gram_weights(g, None) for g in grams[1:]]
        for x, y in zip(got, ref):
            close(x, y, rtol=1e-12)
    # reused between updates
    c = build("nash_mtl", update_weights_every=2)
    w0 = c.gram_weights(grams[0], None).clone()
    assert torch.equal(c.gram_weights(grams[1], None), w0)
    assert not torch.equal(c.gram_weights(grams[2], None), w0)


def test_every_new_combiner_runs_from_the_command_line(tmp_path):
    """`mtbench -m combiner=<the nine>` on a tiny shapes40, and two at level=params."""
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["-m", f"combiner={','.join(NEW)}", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in NEW:
        m = json.loads((run_dir(tmp_path / "results" / "shapes40", name) / "metrics.json").read_text())
        assert m["status"] == "completed", (name, m.get("reason"))
        assert math.isfinite(m["test"]["error_rate"])
    for name in ("upgrad", "gradvac"):
        cwd = tmp_path / f"params-{name}"
        cwd.mkdir()
        proc = run_cli("mtbench", [f"combiner={name}", "combiner.level=params", *args], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-4000:]
        m = json.loads((run_dir(cwd / "results" / "shapes40", name) / "metrics.json").read_text())
        assert m["status"] == "completed" and m["config"]["combiner"]["level"] == "params"


@pytest.mark.parametrize("method", list(ALL))
def test_one_task_is_its_gradient_and_all_zero_gradients_give_zero(method):
    g = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    close(ALL[method](g), g[0], rtol=1e-6)
    out = ALL[method](torch.zeros(3, 6, dtype=torch.float64))
    assert torch.equal(out, torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_active_set_equals_quadprog(method, monkeypatch):
    """mtbench's block principal pivoting solves the same QPs as torchjd's quadprog: the same
    weights on the adversarial matrices, on 40 tasks (in 512 and in 10 dimensions) and on 150 in
    40, cold and warm-started from another matrix's free sets; quadprog takes over the rows on
    which the pivoting does not settle, and every row if a factorisation fails."""
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(5)
    cases = dict(MATS)
    # 150 tasks in 40 dimensions: free sets of many sizes (each row's system padded to the
    # largest), and rows on which the pivoting does not settle (quadprog solves those rows)
    for name, tasks, dim in (("t40", 40, 512), ("t40_d10", 40, 10), ("t150_d40", 150, 40)):
        cases[name] = 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64) + torch.randn(
            tasks, dim, generator=gen, dtype=torch.float64
        )
    for J in cases.values():
        G = J @ J.T
        ref, none = dual_cone_state(G, method, "quadprog")
        assert none is None
        ours, free = dual_cone_state(G, method)
        close(ours @ J, ref @ J, floor=float(J.sum(0).norm()))
        moved = J + 0.1 * torch.randn(J.shape, generator=gen, dtype=torch.float64)
        _, other = dual_cone_state(moved @ moved.T, method)
        warm, _ = dual_cone_state(G, method, start=other)
        close(warm @ J, ref @ J, floor=float(J.sum(0).norm()))
        assert free.dtype == torch.bool and free.shape == (
            (J.shape[0], J.shape[0]) if method == "upgrad" else (1, J.shape[0])
        )
    import mtbench.combiners.solvers.dual_cone as dual_cone

    monkeypatch.setattr(dual_cone, "_PIVOT_MAX_SWEEPS", 0)
    J = cases["t40"]
    fallback, state = dual_cone_state(J @ J.T, method)  # no row settles: quadprog solves every row
    assert state is not None and state.dtype == torch.bool
    torch.testing.assert_close(fallback, dual_cone_state(J @ J.T, method, "quadprog")[0], rtol=1e-12, atol=0)
    monkeypatch.setattr(dual_cone, "_PIVOT_MAX_SWEEPS", 100)
    J = cases["t40_d10"]  # (every QP here needs a factorisation)
    quadprog = dual_cone_state(J @ J.T, method, "quadprog")[0]
    # a failed factorisation: quadprog solves every row, no state; compiled (below 64 tasks)...
    import mtbench.combiners.solvers.dual_cone_compiled as loops

    real_pivots = loops.dual_cone_pivots
    monkeypatch.setattr(loops, "dual_cone_weights", lambda *a: False)  # (its pivots are compiled in: the general path)
    monkeypatch.setattr(loops, "dual_cone_pivots", lambda a, *rest: real_pivots(-a, *rest))  # A indefinite
    fallback, state = dual_cone_state(J @ J.T, method)
    assert state is None
    torch.testing.assert_close(fallback, quadprog, rtol=0, atol=0)
    # ... and batched
    monkeypatch.setattr(loops, "dual_cone_pivots", real_pivots)
    monkeypatch.setattr(dual_cone, "_COMPILED_BELOW", 0)
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m: (real(m)[0], torch.ones(1, dtype=torch.int32)))
    fallback, state = dual_cone_state(J @ J.T, method)
    assert state is None
    torch.testing.assert_close(fallback, quadprog, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_compiled_pivoting_is_the_batched_one(method, monkeypatch):
    """Below 64 tasks each QP pivots on its own, compiled (:func:`loops.dual_cone_pivots`); the
    batched pivoting (the path from 64 tasks on, Cholesky for every sweep here) makes the same
    sweeps: the same free sets, and the combined gradients equal to rounding (the weights of a
    singular Gram matrix, T > D, only to its condition number), cold and warm-started, on 40
    tasks in 512 dimensions and on the adversarial matrices."""
    import mtbench.combiners.solvers.dual_cone as dual_cone
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(11)
    cases = dict(MATS)
    cases["t40"] = 0.3 * torch.randn(512, generator=gen, dtype=torch.float64) + torch.randn(
        40, 512, generator=gen, dtype=torch.float64
    )
    for J in cases.values():
        G = J @ J.T
        moved = J + 0.3 * torch.randn(J.shape, generator=gen, dtype=torch.float64)
        monkeypatch.setattr(dual_cone, "_COMPILED_BELOW", 64)
        _, start = dual_cone_state(moved @ moved.T, method)
        compiled = [dual_cone_state(G, method, start=s) for s in (None, start)]
        monkeypatch.setattr(dual_cone, "_COMPILED_BELOW", 0)
        batched = [dual_cone_state(G, method, start=s) for s in (None, start)]
        for (w, free), (ref, ref_free) in zip(compiled, batched):
            assert torch.equal(free, ref_free)
            close(w @ J, ref @ J, rtol=1e-12, floor=float(J.sum(0).norm()))


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_one_call_is_the_general_path(method, monkeypatch):
    """Below 64 tasks the whole solve from the Gram matrix is one compiled call
    (:func:`loops.dual_cone_weights`); its weights and free sets are those of the general path
    (NumPy around the compiled pivoting) bit for bit, cold and warm-started, on 100 random
    problems of 2 to 59 tasks; a zero gradient hands the solve to the general path."""
    import mtbench.combiners.solvers.dual_cone_compiled as loops

    gen = torch.Generator().manual_seed(21)
    calls = []
    one_call = loops.dual_cone_weights
    for trial in range(100):
        n, d = int(torch.randint(2, 60, (1,), generator=gen)), int(torch.randint(2, 100, (1,), generator=gen))
        J = torch.randn(n, d, generator=gen, dtype=torch.float64)
        J = J + (trial % 3) * torch.randn(d, generator=gen, dtype=torch.float64)
        G = J @ J.T
        monkeypatch.setattr(loops, "dual_cone_weights", lambda *a: calls.append(1) and one_call(*a))
        fast = [F.dual_cone_state(G, method)]
        fast.append(F.dual_cone_state(G, method, start=fast[0][1]))
        monkeypatch.setattr(loops, "dual_cone_weights", lambda *a: False)
        general = [F.dual_cone_state(G, method)]
        general.append(F.dual_cone_state(G, method, start=general[0][1]))
        for (w, free), (ref, ref_free) in zip(fast, general):
            assert torch.equal(w, ref) and torch.equal(free, ref_free), trial
    assert len(calls) == 200
    import numpy as np

    J = MATS["zero_task"]
    monkeypatch.setattr(loops, "dual_cone_weights", one_call)
    w, _ = F.dual_cone_state(J @ J.T, method)
    n = J.shape[0]
    rows = n if method == "upgrad" else 1
    out, free = np.empty(n), np.empty((rows, n), dtype=bool)
    assert not one_call((J @ J.T).numpy(), method == "upgrad", np.zeros((rows, n), dtype=bool), 1e-9, 100, out, free)
    close(w @ J, getattr(F, method)(J), rtol=1e-12)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_conjugate_gradients_at_many_tasks(method, monkeypatch):
    """From 64 tasks on the pivoting's systems are solved by conjugate gradients. 100 tasks in
    1024 dimensions, 30 of them against the others: the weights are quadprog's, and the
    factorisations' (conjugate gradients held to no iteration: Cholesky solves every row)
    with the same free sets; UPGrad's 100 QPs factorise only in sweeps with small free sets
    (DualProj's one free set, the 30 correlated tasks, is ill-conditioned: Cholesky may take it). 150 tasks in
    40 dimensions (a singular Gram matrix, the ridge its only curvature): they do not
    converge and Cholesky takes over."""
    import mtbench.combiners.solvers.dual_cone as dual_cone
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(8)
    shared = torch.randn(1024, generator=gen, dtype=torch.float64)
    J = torch.randn(100, 1024, generator=gen, dtype=torch.float64)
    J[:30] -= 0.3 * shared
    J[30:] += 0.3 * shared
    G = J @ J.T
    factorised = []
    real = dual_cone._free_set_solve
    monkeypatch.setattr(
        dual_cone, "_free_set_solve", lambda *a: factorised.append(int(a[2].sum(1).max(initial=0))) or real(*a)
    )
    conjugate = []
    real_cg = dual_cone._free_set_cg
    monkeypatch.setattr(dual_cone, "_free_set_cg", lambda *a: conjugate.append(1) or real_cg(*a))
    ours, free = dual_cone_state(G, method)
    # UPGrad: only sweeps with small free sets are factorised (its large ones all converge);
    # DualProj's one small free set (29 tasks) is factorised
    assert method == "dualproj" or (conjugate and all(w**3 <= 6 * 100**2 for w in factorised))
    ref, _ = dual_cone_state(G, method, "quadprog")
    close(ours @ J, ref @ J, floor=float(J.sum(0).norm()))
    monkeypatch.setattr(dual_cone, "_CG_MAX_ITER", 0)
    factorised.clear()
    exact, exact_free = dual_cone_state(G, method)
    assert factorised and torch.equal(free, exact_free)
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12 * float(exact.abs().max()))
    monkeypatch.setattr(dual_cone, "_CG_MAX_ITER", 60)
    factorised.clear()
    K = torch.randn(150, 40, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        40, generator=gen, dtype=torch.float64
    )
    got, _ = dual_cone_state(K @ K.T, method)
    assert factorised
    close(got @ K, dual_cone_state(K @ K.T, method, "quadprog")[0] @ K, floor=float(K.sum(0).norm()))


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
def test_warm_started_combiners_keep_their_start_in_the_state(name):
    """The warm start is combiner state: a combiner loaded from another's state_dict solves the
    next Gram matrix exactly as that one does."""
    J = MATS["random"]
    moved = J + 0.1 * torch.randn(J.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    losses = torch.ones(5)
    step = type("S", (), {"losses": losses, "rep": torch.zeros(1)})()
    comb = COMBINERS[name](5)
    assert comb.warm_start_state
    comb.gram_weights(moved @ moved.T, step)
    other = COMBINERS[name](5)
    other.load_state_dict(comb.state_dict())
    torch.testing.assert_close(other.gram_weights(J @ J.T, step), comb.gram_weights(J @ J.T, step), rtol=0, atol=0)

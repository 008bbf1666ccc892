"""MGDA (mtbench/combiners/mgda.py): the min-norm weights against an exhaustive active-set
enumeration and closed forms, its solver's paths, and the combiner's gradient at both levels."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from model_steps import (
    T,
    assert_close_list,
    baseline_grads,
    flat,
    make_batch,
    make_model,
    per_task_param_grads,
    run_combiner,
    seeded,
    step_for,
)

from mtbench.combiners.functional import (
    mgda_weights,
    mgda_weights_from_gram,
)


@pytest.mark.parametrize("level", ["representation", "params"])
@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_shared_gradient_is_T_times_weighted_sum(level, normalization):
    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    per_task = per_task_param_grads(model, x, y)
    if level == "representation":
        basis = torch.stack(
            [torch.autograd.grad(st.losses[i], st.rep, retain_graph=True)[0].flatten() for i in range(T)]
        )
    else:
        basis = per_task
    n = {
        "none": torch.ones(T, dtype=torch.float64),
        "l2": basis.norm(dim=1),
        "loss": st.losses.detach(),
        "loss+": st.losses.detach() * basis.norm(dim=1),
    }[normalization]
    w = mgda_weights(basis / n[:, None])
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    m, comb, got = run_combiner("mgda", level=level, normalization=normalization)
    n_shared = len(m.shared_parameters())
    torch.testing.assert_close(flat(got[:n_shared]), T * (w @ per_task), rtol=1e-7, atol=1e-10)
    assert_close_list(got[n_shared:], baseline_grads()[n_shared:], rtol=1e-12, atol=1e-12)
    m, comb, got = run_combiner("mgda", level=level, normalization=normalization, rescale=False)
    torch.testing.assert_close(flat(got[:n_shared]), w @ per_task, rtol=1e-7, atol=1e-10)


def exact_min_norm(gram: torch.Tensor):
    """Exhaustive active-set solver for min_{w in simplex} w^T G w (independent reference).

    For every non-empty support S, solve the equality-constrained QP
    min w_S^T G_SS w_S s.t. sum(w_S) = 1 through its KKT system (pseudo-inverse), keep
    the feasible solutions and return the best objective and weights.
    """
    n = gram.shape[0]
    best_obj, best_w = math.inf, None
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = 2.0 * gram[idx][:, idx]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            w_s = (torch.linalg.pinv(kkt) @ rhs)[:size]
            if bool((w_s < -1e-12).any()) or abs(w_s.sum().item() - 1.0) > 1e-9:
                continue
            w = torch.zeros(n, dtype=torch.float64)
            w[idx] = w_s.clamp_min(0.0)
            w = w / w.sum()
            obj = (w @ gram @ w).item()
            if obj < best_obj:
                best_obj, best_w = obj, w
    return best_obj, best_w


def assert_simplex(w: torch.Tensor, atol: float):
    assert bool((w >= 0).all())
    assert abs(w.sum().item() - 1.0) <= atol
    assert bool(torch.isfinite(w).all())


MGDA_CASES = [
    # (T, D, kind)
    (5, 2, "plain"),  # rank deficient: T > D
    (5, 3, "shared"),  # rank deficient
    (5, 1, "plain"),
    (5, 3, "duplicates"),
    (5, 8, "plain"),
    (5, 8, "shared"),
    (5, 40, "scaled"),
    (5, 100_000, "shared"),  # large D
    (5, 100_000, "plain"),
]


def make_problem(n_tasks, dim, kind, seed):
    gen = seeded(seed)
    grads = torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    if kind == "shared":  # a common component: sparse optimal supports are likely
        grads = grads + 2.0 * torch.randn(1, dim, generator=gen, dtype=torch.float64)
    elif kind == "duplicates":
        grads[3] = grads[0]
        grads[4] = grads[1]
    elif kind == "scaled":
        grads = grads * torch.tensor([1e-2, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)[:, None]
        grads = grads + torch.randn(1, dim, generator=gen, dtype=torch.float64)
    return grads


def test_mgda_two_tasks_closed_form():
    cases = [
        ([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),  # orthogonal, equal norms
        ([[1.0, 0.0], [2.0, 0.0]], [1.0, 0.0]),  # g1 is the hull's nearest point to 0
        ([[2.0, 0.0], [1.0, 0.0]], [0.0, 1.0]),
        # gamma = g2.(g2 - g1) / ||g1 - g2||^2 = (0, 2).(-1, 2) / 5 = 4/5
        ([[1.0, 0.0], [0.0, 2.0]], [0.8, 0.2]),
        # opposite gradients: the midpoint is the origin
        ([[1.0, 0.0], [-1.0, 0.0]], [0.5, 0.5]),
        # g1 = (3, 1), g2 = (-1, 1): gamma = (-1, 1).(-4, 0) / 16 = 1/4
        ([[3.0, 1.0], [-1.0, 1.0]], [0.25, 0.75]),
    ]
    for grads, expected in cases:
        for dtype in (torch.float32, torch.float64):
            g = torch.tensor(grads, dtype=dtype)
            w = mgda_weights(g)
            assert w.dtype == dtype
            torch.testing.assert_close(w, torch.tensor(expected, dtype=dtype), rtol=0, atol=1e-7)
            w_gram = mgda_weights_from_gram(g.double() @ g.double().T)
            torch.testing.assert_close(w_gram, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_mgda_degenerate_small_cases():
    assert torch.equal(mgda_weights(torch.randn(1, 5)), torch.ones(1))
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert_simplex(mgda_weights(same), 1e-6)
    for n_tasks in (2, 3, 6):
        w = mgda_weights(torch.zeros(n_tasks, 4))
        assert_simplex(w, 1e-6)
        torch.testing.assert_close(w, torch.full((n_tasks,), 1.0 / n_tasks))
    # one zero gradient among positive ones: the origin is that vertex only
    grads = torch.rand(5, 8, generator=seeded(0), dtype=torch.float64) + 0.1
    grads[3] = 0.0
    torch.testing.assert_close(mgda_weights(grads), torch.eye(5, dtype=torch.float64)[3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_tasks,dim,kind", MGDA_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_mgda_matches_exhaustive_solver(n_tasks, dim, kind, seed):
    grads = make_problem(n_tasks, dim, kind, seed)
    gram = grads @ grads.T
    best_obj, best_w = exact_min_norm(gram)
    scale = gram.diagonal().max().item()

    w = mgda_weights(grads)
    assert w.dtype == torch.float64
    assert_simplex(w, 1e-12)
    obj = (w @ gram @ w).item()
    assert abs(obj - best_obj) <= 1e-9 * best_obj + 1e-13 * scale, (obj, best_obj)

    w_gram = mgda_weights_from_gram(gram)
    assert_simplex(w_gram, 1e-12)
    obj_gram = (w_gram @ gram @ w_gram).item()
    assert abs(obj_gram - best_obj) <= 1e-9 * best_obj + 1e-13 * scale

    # the optimum is unique when G is positive definite
    if torch.linalg.eigvalsh(gram / scale).min().item() > 1e-8:
        torch.testing.assert_close(w, best_w, rtol=0, atol=1e-7)
        torch.testing.assert_close(w_gram, best_w, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n_tasks,dim,kind", MGDA_CASES)
def test_mgda_warm_start_finds_the_same_minimiser(n_tasks, dim, kind):
    """A start from another problem's weights (a training step's previous solve) reaches the
    exhaustive solver's optimum too, and the unique weights where G is positive definite."""
    grads = make_problem(n_tasks, dim, kind, 7)
    gram = grads @ grads.T
    best_obj, best_w = exact_min_norm(gram)
    scale = gram.diagonal().max().item()
    nearby = grads + 0.3 * torch.randn(grads.shape, generator=seeded(8), dtype=torch.float64)
    starts = [
        mgda_weights_from_gram(nearby @ nearby.T),
        torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64),  # every task active
        torch.eye(n_tasks, dtype=torch.float64)[n_tasks - 1],  # one vertex
        best_w,  # already optimal
    ]
    for start in starts:
        w = mgda_weights_from_gram(gram, start=start)
        assert_simplex(w, 1e-12)
        obj = (w @ gram @ w).item()
        assert abs(obj - best_obj) <= 1e-9 * best_obj + 1e-13 * scale, (start, obj, best_obj)
        if torch.linalg.eigvalsh(gram / scale).min().item() > 1e-8:
            torch.testing.assert_close(w, best_w, rtol=0, atol=1e-7)


def test_mgda_warm_start_ignores_an_unusable_start():
    grads = make_problem(6, 20, "shared", 2)
    gram = grads @ grads.T
    cold = mgda_weights_from_gram(gram)
    for start in (
        torch.ones(5, dtype=torch.float64),  # another size
        torch.tensor([0.5, -0.1, 0.6, 0, 0, 0], dtype=torch.float64),  # negative
        torch.tensor([float("nan"), 1, 0, 0, 0, 0], dtype=torch.float64),
        torch.zeros(6, dtype=torch.float64),  # no support
    ):
        torch.testing.assert_close(mgda_weights_from_gram(gram, start=start), cold, rtol=0, atol=1e-12)


def test_mgda_warm_start_takes_fewer_affine_solves(monkeypatch):
    """From the last step's weights a slightly changed problem needs few affine solves."""
    import mtbench.combiners.solvers.min_norm as min_norm

    calls = []
    solve = min_norm._affine_minimizer_np
    monkeypatch.setattr(min_norm, "_affine_minimizer_np", lambda g, s: calls.append(len(s)) or solve(g, s))
    monkeypatch.setattr(min_norm, "_COMPILED_BELOW", 0)  # the NumPy loop (the compiled one is the same)
    grads = make_problem(40, 200, "shared", 3)
    w0 = mgda_weights_from_gram(grads @ grads.T)
    cold = len(calls)
    moved = grads + 1e-3 * torch.randn(grads.shape, generator=seeded(4), dtype=torch.float64)
    calls.clear()
    mgda_weights_from_gram(moved @ moved.T, start=w0)
    assert cold >= 5 and len(calls) <= 2, (cold, calls)


def test_compiled_wolfe_is_the_numpy_loop():
    """Below 64 tasks Wolfe's algorithm (MGDA's and CAGrad's solver) runs compiled
    (:func:`loops.wolfe_min_norm`); its support and weights are the NumPy loop's bit for bit,
    cold and warm-started (from a nearby problem's solution and from a random active set), on
    3 to 63 tasks with shared components, one task 1e4 times larger, a zero task and duplicates,
    exact conflicts and T > D. A singular affine system (duplicates in the active set) hands the
    solve to the NumPy loop, whose least-squares fallback then gives the answer."""
    import numpy as np

    import mtbench.combiners.solvers.min_norm as min_norm
    from mtbench.combiners.solvers.min_norm_compiled import wolfe_min_norm

    rng = np.random.default_rng(0)
    for trial in range(300):
        n, dim = int(rng.integers(3, 64)), int(rng.integers(1, 120))
        J = rng.standard_normal((n, dim))
        kind = trial % 5
        if kind == 1:
            J += 2.0 * rng.standard_normal(dim)
        elif kind == 2:
            J[0] *= 1e4
        elif kind == 3:
            J[1], J[2] = 0.0, J[0]
        elif kind == 4:
            J[1] = -J[0]
        g = J @ J.T
        g = 0.5 * (g + g.T) / g.diagonal().max()
        moved = J + 0.05 * rng.standard_normal(J.shape)
        near = min_norm._wolfe_np((moved @ moved.T) / (moved @ moved.T).diagonal().max(), 1e-10, 1000, None)
        w0 = rng.random(n) * (rng.random(n) < 0.4)
        w0[0] += 0.1
        support = np.flatnonzero(w0).tolist()
        for warm in (None, near, (support, w0[support] / w0[support].sum())):
            ref = min_norm._wolfe_np(g, 1e-10, 1000, warm)
            got = min_norm._wolfe(g, 1e-10, 1000, warm)
            assert got[0] == ref[0], (trial, warm is None)
            assert np.array_equal(got[1], ref[1]), (trial, warm is None)
    J = rng.standard_normal((5, 8))
    J[1] = J[0]
    g = J @ J.T / (J @ J.T).diagonal().max()
    warm = ([0, 1, 2], np.array([0.3, 0.3, 0.4]))
    assert not wolfe_min_norm(g, 1e-10, 1e-13, 1000, True, np.array(warm[0]), warm[1])[2]
    ref = min_norm._wolfe_np(g, 1e-10, 1000, warm)
    got = min_norm._wolfe(g, 1e-10, 1000, warm)
    assert got[0] == ref[0] and np.array_equal(got[1], ref[1])


@pytest.mark.parametrize("kind", ["shared", "plain"])
def test_mgda_block_pivots_on_large_supports(monkeypatch, kind):
    """From 64 tasks on, a warm start first tries block pivots (one affine solve per guessed
    active set); the result meets the KKT conditions and equals the cold Wolfe solve, from a
    nearby problem's weights and from one vertex; with no pivots left, a wrong guess (the
    vertex) still reaches it through Wolfe's algorithm."""
    import mtbench.combiners.solvers.min_norm as min_norm

    n_tasks = 120
    assert n_tasks >= min_norm._PIVOT_MIN_TASKS
    grads = make_problem(n_tasks, 300, kind, 11)
    gram = grads @ grads.T
    cold = mgda_weights_from_gram(gram)
    moved = grads + 1e-2 * torch.randn(grads.shape, generator=seeded(12), dtype=torch.float64)
    start = mgda_weights_from_gram(moved @ moved.T)
    wolfe_calls = []
    wolfe = min_norm._wolfe_np
    monkeypatch.setattr(min_norm, "_wolfe_np", lambda *a: wolfe_calls.append(1) or wolfe(*a))
    vertex = torch.eye(n_tasks, dtype=torch.float64)[0]
    for begin, pivots in ((start, min_norm._BLOCK_PIVOTS), (vertex, min_norm._BLOCK_PIVOTS), (vertex, 0)):
        monkeypatch.setattr(min_norm, "_BLOCK_PIVOTS", pivots)
        pivoted = pivots > 0
        wolfe_calls.clear()
        w = mgda_weights_from_gram(gram, start=begin)
        assert (not wolfe_calls) == pivoted, (kind, pivoted)
        assert_simplex(w, 1e-12)
        g_w = gram @ w
        obj = (w @ g_w).item()
        tol = 1e-9 * obj + 1e-12 * gram.diagonal().max().item()
        assert g_w.min().item() >= obj - tol
        assert bool(((g_w - obj).abs() <= tol)[w > 1e-9].all())
        assert abs(obj - (cold @ gram @ cold).item()) <= 1e-9 * obj
        torch.testing.assert_close(w, cold, rtol=0, atol=1e-7)


def test_mgda_kkt_many_tasks():
    # too many tasks to enumerate: check optimality through the KKT conditions
    for seed, (n_tasks, dim) in enumerate([(30, 10), (30, 200), (40, 5), (12, 12)]):
        grads = make_problem(n_tasks, dim, "shared" if seed % 2 else "plain", 50 + seed)
        grads[n_tasks // 2] = grads[0]  # and a duplicate
        gram = grads @ grads.T
        w = mgda_weights(grads)
        assert_simplex(w, 1e-12)
        g_w = gram @ w
        obj = (w @ g_w).item()
        tol = 1e-9 * obj + 1e-12 * gram.diagonal().max().item()
        assert g_w.min().item() >= obj - tol  # no vertex improves on w
        assert bool(((g_w - obj).abs() <= tol)[w > 1e-9].all())  # complementary slackness


def test_mgda_float32_and_shapes():
    grads = make_problem(6, 30, "shared", 3)
    w32 = mgda_weights(grads.float().reshape(6, 5, 6))
    assert w32.dtype == torch.float32 and w32.shape == (6,)
    assert_simplex(w32, 1e-6)
    torch.testing.assert_close(w32.double(), mgda_weights(grads), rtol=0, atol=1e-4)

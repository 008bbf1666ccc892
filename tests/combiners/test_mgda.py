"""MGDA (mtbench/combiners/mgda.py): the min-norm weights against an exhaustive active-set
enumeration, closed forms and the optimality certificate, warm starts, and the combiner's
gradient at both levels."""

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


def test_mgda_warm_start_takes_fewer_affine_solves():
    """From the last step's weights a slightly changed problem needs few affine solves."""
    import numpy as np

    from mtbench.combiners.solvers.min_norm import _warm_support
    from mtbench.combiners.solvers.min_norm_compiled import wolfe_min_norm

    def solves(gram, start):
        g = (gram / gram.diagonal().max()).numpy()
        warm = _warm_support(start, g.shape[0])
        support, w = (np.array([int(np.argmin(g.diagonal()))]), np.ones(1)) if warm is None else warm
        return wolfe_min_norm(g, 1e-10, 1e-13, 1000, warm is not None, np.asarray(support), w)[2]

    grads = make_problem(40, 200, "shared", 3)
    w0 = mgda_weights_from_gram(grads @ grads.T)
    moved = grads + 1e-3 * torch.randn(grads.shape, generator=seeded(4), dtype=torch.float64)
    cold, warm = solves(grads @ grads.T, None), solves(moved @ moved.T, w0)
    assert cold >= 5 and warm <= 2, (cold, warm)


def assert_min_norm_certificate(g, w, slack=1e-9):
    """``w`` [T] on the simplex minimises w^T g w: no vertex improves on it (g w >= w^T g w)
    and every task it uses lies on the supporting plane (complementary slackness), to rounding."""
    assert_simplex(w, 1e-12)
    g_w = g @ w
    obj = (w @ g_w).item()
    tol = slack * obj + 1e-12 * g.diagonal().max().item()
    assert g_w.min().item() >= obj - tol
    assert bool(((g_w - obj).abs() <= tol)[w > 1e-9].all())


@pytest.mark.parametrize("n_tasks", [8, 40, 63, 64, 120])
def test_wolfe_is_certified_cold_and_warm(n_tasks):
    """Wolfe's algorithm (MGDA's and CAGrad's solver, compiled at every size) ends at the
    minimiser, cold and warm-started (from a nearby problem's solution, from a random active set
    and from one vertex), on problems with shared components, one task 1e4 times larger, a zero
    task and duplicates (a singular affine system: its least-squares solution), exact
    conflicts (the minimum 0) and T > D: the optimality certificate holds, and the objective is
    the cold solve's."""
    gen = seeded(n_tasks)
    for kind in range(5):
        dim = [n_tasks + 30, n_tasks // 2, 3 * n_tasks, n_tasks + 5, 20][kind]
        J = torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
        if kind == 1:
            J += 2.0 * torch.randn(dim, generator=gen, dtype=torch.float64)
        elif kind == 2:
            J[0] *= 1e4
        elif kind == 3:
            J[1], J[2] = 0.0, J[0]
        elif kind == 4:
            J[1] = -J[0]
        g = J @ J.T
        cold = mgda_weights_from_gram(g)
        assert_min_norm_certificate(g, cold)
        moved = J + 0.05 * torch.randn(J.shape, generator=gen, dtype=torch.float64)
        random = torch.rand(n_tasks, generator=gen, dtype=torch.float64) * (torch.rand(n_tasks, generator=gen) < 0.4)
        random[0] += 0.1
        for start in (mgda_weights_from_gram(moved @ moved.T), random, torch.eye(n_tasks, dtype=torch.float64)[-1]):
            w = mgda_weights_from_gram(g, start=start)
            assert_min_norm_certificate(g, w)
            scale = g.diagonal().max().item()
            assert abs((w @ g @ w).item() - (cold @ g @ cold).item()) <= 1e-9 * (cold @ g @ cold).item() + 1e-13 * scale


def test_mgda_kkt_many_tasks():
    # too many tasks to enumerate: check optimality through the KKT conditions
    for seed, (n_tasks, dim) in enumerate([(30, 10), (30, 200), (40, 5), (12, 12)]):
        grads = make_problem(n_tasks, dim, "shared" if seed % 2 else "plain", 50 + seed)
        grads[n_tasks // 2] = grads[0]  # and a duplicate
        assert_min_norm_certificate(grads @ grads.T, mgda_weights(grads))


def test_mgda_float32_and_shapes():
    grads = make_problem(6, 30, "shared", 3)
    w32 = mgda_weights(grads.float().reshape(6, 5, 6))
    assert w32.dtype == torch.float32 and w32.shape == (6,)
    assert_simplex(w32, 1e-6)
    torch.testing.assert_close(w32.double(), mgda_weights(grads), rtol=0, atol=1e-4)

"""Tests for mtbench.combiners.functional: GradDrop, PCGrad and MGDA as pure functions.

The expected values are computed by hand or by independent reference implementations
written here (a direct PCGrad loop, a GradDrop loop over tasks, and an exhaustive
active-set enumeration for the MGDA min-norm problem).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mtbench.combiners.functional import (
    graddrop,
    mgda_weights,
    mgda_weights_from_gram,
    pcgrad,
    random_graddrop,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ==================================================================================
# PCGrad
# ==================================================================================


def naive_pcgrad(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Direct PCGrad loop on the vectors, drawing one randperm per task in task order."""
    n_tasks = grads.shape[0]
    total = torch.zeros_like(grads[0])
    for i in range(n_tasks):
        g = grads[i].clone()
        others = [j for j in range(n_tasks) if j != i]
        for p in torch.randperm(n_tasks - 1, generator=generator).tolist():
            gj = grads[others[p]]
            sq = torch.dot(gj, gj)
            if sq == 0:
                continue
            d = torch.dot(g, gj)
            if d < 0:
                g = g - d / sq * gj
        total = total + g
    return total


def project_in_order(grads: torch.Tensor, i: int, order) -> torch.Tensor:
    g = grads[i].clone()
    for j in order:
        d = torch.dot(g, grads[j])
        if d < 0:
            g = g - d / torch.dot(grads[j], grads[j]) * grads[j]
    return g


def test_pcgrad_two_conflicting_by_hand():
    # g1.g2 = -1 < 0:
    #   g1' = g1 - (-1)/||g2||^2 g2 = (1, 0) + (-1, 1)/2 = (0.5, 0.5)
    #   g2' = g2 - (-1)/||g1||^2 g1 = (-1, 1) + (1, 0)   = (0, 1)
    # sum = (0.5, 1.5)
    for dtype in (torch.float32, torch.float64):
        grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype)
        out = pcgrad(grads, seeded(0))
        assert out.dtype == dtype
        torch.testing.assert_close(out, torch.tensor([0.5, 1.5], dtype=dtype), rtol=0, atol=1e-6)


def test_pcgrad_non_conflicting_is_plain_sum():
    grads = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # dot = 1 > 0
    assert torch.equal(pcgrad(grads, seeded(0)), grads.sum(0))
    # orthogonal gradients (dot == 0) do not conflict either
    eye = torch.eye(4)
    assert torch.equal(pcgrad(eye, seeded(0)), eye.sum(0))


def test_pcgrad_all_pairwise_non_conflicting_is_exact_sum():
    grads = torch.rand(7, 30, generator=seeded(1)) + 0.01  # all entries > 0: every dot > 0
    assert torch.equal(pcgrad(grads, seeded(2)), grads.sum(0))


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_matches_naive_loop(seed):
    grads64 = torch.randn(6, 50, generator=seeded(100 + seed), dtype=torch.float64)
    if seed == 4:
        grads64[2] = 0.0  # a zero gradient is skipped as a projection target
    for grads, rtol in ((grads64, 1e-10), (grads64.float(), 1e-5)):
        gen_a, gen_b = seeded(seed), seeded(seed)
        out = pcgrad(grads, gen_a)
        ref = naive_pcgrad(grads, gen_b)
        torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * ref.norm().item())
        # both consumed the generator identically
        assert torch.equal(torch.rand(3, generator=gen_a), torch.rand(3, generator=gen_b))


def test_pcgrad_at_many_tasks_is_the_direct_loop():
    """80 tasks on 40 dimensions (many conflicts per visit; one zero task): the compiled
    coefficient-space loop equals the direct algorithm on the gradients."""
    grads = torch.randn(80, 40, generator=seeded(7), dtype=torch.float64)
    grads[5] = 0.0
    out = pcgrad(grads, seeded(3))
    ref = naive_pcgrad(grads, seeded(3))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10 * ref.norm().item())


def test_pcgrad_is_a_sum_not_a_mean():
    grads = torch.randn(5, 20, generator=seeded(7), dtype=torch.float64)
    out = pcgrad(grads, seeded(0))
    ref = naive_pcgrad(grads, seeded(0))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, ref / 5)


def test_pcgrad_fresh_random_order_per_task():
    # three tasks where every task's projection depends on its visiting order
    grads = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [-0.5, -2.0]], dtype=torch.float64)
    per_task = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        outcomes = [project_in_order(grads, i, order) for order in itertools.permutations(others)]
        assert not torch.allclose(outcomes[0], outcomes[1])  # the order matters for every task
        per_task.append(outcomes)
    possible = [sum(choice) for choice in itertools.product(*per_task)]  # 8 distinct sums
    seen = set()
    for seed in range(40):
        out = pcgrad(grads, seeded(seed))
        hits = [k for k, p in enumerate(possible) if torch.allclose(out, p, rtol=0, atol=1e-12)]
        assert len(hits) == 1
        seen.add(hits[0])
    # every combination of per-task orders occurs: orders are drawn independently per task
    assert seen == set(range(8))
    # different seeds give different outputs, the same seed the same output
    assert len({tuple(pcgrad(grads, seeded(s)).tolist()) for s in range(5)}) > 1
    assert torch.equal(pcgrad(grads, seeded(5)), pcgrad(grads, seeded(5)))


def test_pcgrad_shapes():
    grads = torch.randn(3, 4, 5, generator=seeded(3))
    out = pcgrad(grads, seeded(0))
    assert out.shape == (4, 5)
    ref = naive_pcgrad(grads.reshape(3, -1).double(), seeded(0)).reshape(4, 5).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    single = torch.randn(1, 6, generator=seeded(4))
    assert torch.equal(pcgrad(single), single[0])


# ==================================================================================
# MGDA
# ==================================================================================


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


# ==================================================================================
# GradDrop
# ==================================================================================


def reference_graddrop(grads, activation, leak, prob_fn, generator, eps=1e-7):
    """GradDrop written task by task (and batch element by element) from the paper."""
    n_tasks = grads.shape[0]
    if activation is None:
        signed = [grads[i] for i in range(n_tasks)]
    else:
        signed = []
        for i in range(n_tasks):
            acc = torch.zeros_like(grads[i][0])
            for b in range(activation.shape[0]):
                acc = acc + torch.sign(activation[b]) * grads[i][b]
            signed.append(acc)
    num = torch.zeros_like(signed[0])
    den = torch.zeros_like(signed[0])
    for g in signed:
        num = num + g
        den = den + g.abs()
    purity = 0.5 * (1 + num / (den + eps))
    u = torch.rand(purity.shape, generator=generator, dtype=grads.dtype)
    fp = prob_fn(purity)
    out = torch.zeros_like(grads[0])
    for i in range(n_tasks):
        mask = ((fp > u) & (signed[i] > 0)).to(grads.dtype) + ((fp < u) & (signed[i] < 0)).to(grads.dtype)
        if activation is not None:
            mask = mask.unsqueeze(0)
        out = out + (leak[i] + (1 - leak[i]) * mask) * grads[i]
    return out


def test_graddrop_matches_reference_loop():
    gen = seeded(11)
    grads = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    act = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    leak = [0.0, 0.3, 1.0]
    fns = {
        "identity": lambda p: p,
        "linear": lambda p: 0.5 + 0.7 * (p - 0.5),
        "sigmoid": lambda p: torch.sigmoid(4 * 0.7 * (p - 0.5)),
    }
    for f, fn in fns.items():
        for activation in (None, act):
            for seed in range(3):
                out = graddrop(grads, activation, leak, f=f, k=0.7, generator=seeded(seed))
                ref = reference_graddrop(grads, activation, leak, fn, seeded(seed))
                torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out = random_graddrop(grads, act, 0.2, seeded(4))
    ref = reference_graddrop(grads, act, [0.2] * 3, lambda p: torch.full_like(p, 0.5), seeded(4))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_graddrop_all_signs_agree_gives_exact_sum():
    gen = seeded(0)
    magnitudes = torch.rand(4, 6, 9, generator=gen) + 0.5
    position_signs = torch.where(torch.rand(6, 9, generator=gen) < 0.5, -1.0, 1.0)
    activation = torch.randn(6, 9, generator=gen)
    cases = [(g, None) for g in (magnitudes, -magnitudes, magnitudes * position_signs)]
    # batch-separated: per-example gradients carrying sign(A) make every G_i positive
    cases.append((magnitudes * torch.sign(activation), activation))
    for grads, act in cases:
        assert torch.equal(graddrop(grads, act, generator=seeded(1)), grads.sum(0))
        for f in ("linear", "sigmoid"):
            # P = 1 (up to eps) and f(1) > 1/2: kept with probability f(P), not always
            out = graddrop(grads, act, f=f, k=1.0, generator=seeded(1))
            assert bool(((out == grads.sum(0)) | (out == 0)).all())
        # the random control ignores the agreement: all kept or all dropped, about half each
        out = random_graddrop(grads, act, generator=seeded(2))
        kept = out == grads.sum(0)
        assert bool((kept | (out == 0)).all())
        assert 0.2 < kept.double().mean().item() < 0.8


def test_graddrop_full_leak_gives_exact_sum():
    grads = torch.randn(3, 5, 8, generator=seeded(3))
    activation = torch.randn(5, 8, generator=seeded(4))
    for leak in (1.0, [1.0, 1.0, 1.0], torch.ones(3)):
        for act in (None, activation):
            assert torch.equal(graddrop(grads, act, leak, generator=seeded(5)), grads.sum(0))
            assert torch.equal(random_graddrop(grads, act, leak, generator=seeded(5)), grads.sum(0))


def test_graddrop_zero_gradients_give_zeros_without_nan():
    zeros = torch.zeros(3, 4, 5)
    for eps in (1e-7, 0.0):  # eps = 0 makes P = 0/0
        for act in (None, torch.randn(4, 5, generator=seeded(0))):
            for renorm in (False, True):
                out = graddrop(zeros, act, eps=eps, renormalize=renorm, generator=seeded(1))
                assert torch.equal(out, torch.zeros(4, 5))
                out = random_graddrop(zeros, act, 0.5, eps=eps, renormalize=renorm, generator=seeded(1))
                assert torch.equal(out, torch.zeros(4, 5))
    # a zero activation makes every signed gradient 0, so every mask is 0 (leak 0):
    # the output is zero even though the plain sum is not, and renormalising keeps it zero
    grads = torch.randn(2, 3, 4, generator=seeded(2))
    out = graddrop(grads, torch.zeros(3, 4), renormalize=True, eps=0.0, generator=seeded(3))
    assert torch.equal(out, torch.zeros(3, 4))


def test_graddrop_batch_separated_mask_is_shared_by_the_batch():
    gen = seeded(7)
    batch, features = 6, 300
    grads = torch.randn(2, batch, features, generator=gen)
    activation = torch.randn(batch, features, generator=gen)
    out = graddrop(grads, activation, generator=seeded(8))
    # for every feature, one (m1, m2) in {0,1}^2 explains all batch rows at once
    combos = [(0, 0), (1, 0), (0, 1), (1, 1)]
    candidates = torch.stack([(m1 * grads[0:1] + m2 * grads[1:2]).sum(0) for m1, m2 in combos])
    matches = (candidates == out.unsqueeze(0)).all(dim=1)  # [4, features]
    assert bool(matches.any(dim=0).all())
    # and the draw is per feature: both "task 1 only" and "task 2 only" occur
    assert int(matches[1].sum()) > 10 and int(matches[2].sum()) > 10


def test_graddrop_validation_messages():
    grads = torch.randn(40, 6)
    with pytest.raises(ValueError) as err:
        graddrop(grads, leak=[0.1, 0.2, 0.3])
    assert str(err.value) == "leak has 3 values but there are 40 tasks; give one number or one per task"
    bad_calls = [
        (lambda: graddrop(grads, leak=1.5), "leak"),
        (lambda: graddrop(grads, leak=-0.1), "leak"),
        (lambda: graddrop(grads, leak=[0.5] * 39 + [2.0]), "leak"),
        (lambda: graddrop(grads, leak=float("nan")), "leak"),
        (lambda: random_graddrop(grads, leak=[0.0, 0.0]), "leak"),
        (lambda: graddrop(grads, f="tanh"), "f must be one of"),
        (lambda: graddrop(grads, f="linear", k=float("inf")), "k must be a finite number"),
        (lambda: graddrop(grads, f="sigmoid", k=float("nan")), "k must be a finite number"),
        (lambda: graddrop(grads, activation=torch.randn(5)), "activation"),
        (lambda: random_graddrop(torch.randn(2, 3, 4), activation=torch.randn(4, 3)), "activation"),
    ]
    for call, needle in bad_calls:
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert needle in message and "\n" not in message
    with pytest.raises(ValueError) as err:
        graddrop(grads, f="tanh")
    assert all(name in str(err.value) for name in ("identity", "linear", "sigmoid"))


N_DRAWS = 20_000


def kept_positive_fraction(out: torch.Tensor) -> float:
    # with gradients +7 and -3 exactly one of them survives at each position
    assert bool(((out == 7.0) | (out == -3.0)).all())
    return (out == 7.0).double().mean().item()


def assert_binomial(fraction: float, p: float):
    sigma = math.sqrt(p * (1 - p) / N_DRAWS)
    assert abs(fraction - p) <= 5 * sigma, (fraction, p)


def test_graddrop_keep_probability_in_distribution():
    grads = torch.stack([torch.full((N_DRAWS,), 7.0), torch.full((N_DRAWS,), -3.0)])
    purity = 0.5 * (1 + 4.0 / 10.0)  # 0.7
    assert_binomial(kept_positive_fraction(graddrop(grads, generator=seeded(0))), purity)
    assert_binomial(kept_positive_fraction(random_graddrop(grads, generator=seeded(1))), 0.5)
    assert_binomial(kept_positive_fraction(graddrop(grads, f="linear", k=0.0, generator=seeded(2))), 0.5)
    assert_binomial(kept_positive_fraction(graddrop(grads, f="linear", k=0.5, generator=seeded(3))), 0.6)
    for k in (0.5, 1.0, 2.0):
        expected = 1.0 / (1.0 + math.exp(-4.0 * k * (purity - 0.5)))
        assert_binomial(kept_positive_fraction(graddrop(grads, f="sigmoid", k=k, generator=seeded(4))), expected)


def test_graddrop_keep_probability_batch_separated():
    # per-example gradients whose signed batch sums are +7 and -3 at every feature
    batch = 4
    activation = torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None].expand(batch, N_DRAWS)
    g1 = torch.tensor([1.0, -2.0, 2.0, 2.0])[:, None].expand(batch, N_DRAWS)  # signed sum 1+2+2+2 = 7
    g2 = torch.tensor([-1.0, 1.0, 0.0, -1.0])[:, None].expand(batch, N_DRAWS)  # signed sum -1-1+0-1 = -3
    grads = torch.stack([g1, g2])
    out = graddrop(grads, activation, generator=seeded(9))
    kept_first = (out == g1).all(dim=0)
    kept_second = (out == g2).all(dim=0)
    assert bool((kept_first ^ kept_second).all())
    assert_binomial(kept_first.double().mean().item(), 0.7)


def test_graddrop_per_task_leak_exact():
    # g1 = +1, g2 = -2 at every position: P = (1 + (1 - 2) / 3) / 2 = 1/3.
    # leak = (0, 0.5): keep positive -> 1 + 0.5 * (-2) = 0; keep negative -> -2.
    n = 1000
    grads = torch.stack([torch.ones(n), torch.full((n,), -2.0)]).double()
    out = graddrop(grads, leak=[0.0, 0.5], generator=seeded(12))
    u = torch.rand(n, generator=seeded(12), dtype=torch.float64)
    purity = 0.5 * (1 + (-1.0) / (3.0 + 1e-7))
    expected = torch.where(purity > u, torch.zeros(n, dtype=torch.float64), torch.full((n,), -2.0, dtype=torch.float64))
    assert torch.equal(out, expected)


def test_graddrop_renormalize_matches_plain_sum_norm():
    grads = torch.randn(5, 8, 16, generator=seeded(13), dtype=torch.float64)
    activation = torch.randn(8, 16, generator=seeded(14), dtype=torch.float64)
    for act in (None, activation):
        plain = graddrop(grads, act, generator=seeded(15))
        renorm = graddrop(grads, act, renormalize=True, generator=seeded(15))
        target = grads.sum(0).norm()
        torch.testing.assert_close(renorm.norm(), target, rtol=1e-12, atol=0)
        torch.testing.assert_close(renorm, plain * (target / plain.norm()), rtol=1e-12, atol=1e-12)
        rand = random_graddrop(grads, act, renormalize=True, generator=seeded(16))
        torch.testing.assert_close(rand.norm(), target, rtol=1e-12, atol=0)


def test_graddrop_generator_reproducibility_and_consumption():
    grads = torch.randn(4, 8, 32, generator=seeded(17))
    activation = torch.randn(8, 32, generator=seeded(18))
    for act, draw_shape in ((None, (8, 32)), (activation, (32,))):
        a = graddrop(grads, act, generator=seeded(19))
        b = graddrop(grads, act, generator=seeded(19))
        c = graddrop(grads, act, generator=seeded(20))
        assert torch.equal(a, b) and not torch.equal(a, c)
        # exactly one torch.rand of P's shape is drawn (one value per feature in batch mode)
        gen, ref = seeded(21), seeded(21)
        graddrop(grads, act, generator=gen)
        torch.rand(draw_shape, generator=ref)
        assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=ref))
        assert torch.equal(
            random_graddrop(grads, act, generator=seeded(22)), random_graddrop(grads, act, generator=seeded(22))
        )


def test_graddrop_dtype_and_shape():
    for dtype in (torch.float32, torch.float64):
        grads = torch.randn(3, 2, 5, generator=seeded(23)).to(dtype)
        out = graddrop(grads, torch.randn(2, 5, generator=seeded(24)).to(dtype), generator=seeded(25))
        assert out.dtype == dtype and out.shape == (2, 5)

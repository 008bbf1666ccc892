"""UPGrad and DualProj's dual-cone solver (mtbench/combiners/upgrad.py, dualproj.py): no conflict with
any task, and the active-set, compiled, one-call and conjugate-gradient paths against quadprog."""

from __future__ import annotations

import pytest
import torch
from gram_matrices import ALL, MATS, close

from mtbench.combiners import functional as F


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_the_dual_cone_methods_conflict_with_no_task(method):
    for name in ("random", "opposing", "one_1e4_larger", "zero_task"):
        J = MATS[name]
        out = ALL[method](J)
        # the unit gradients' Gram matrix is regularised by 1e-9 I: every task's cosine >= -1e-8
        assert bool((J @ out >= -1e-8 * J.norm(dim=1) * out.norm()).all()), name
    # 8 gradients spanning R^3: the dual cone is {0}; the regularised solver gives nearly 0
    J = MATS["T_gt_D"]
    assert float(ALL[method](J).norm()) < 1e-2 * float(J.sum(0).norm())
    g = MATS["agreeing"][0]
    assert float(ALL[method](torch.stack([g, -g])).norm()) < 1e-12 * float(g.norm())


@pytest.mark.slow  # the solvers at 96 and 100 tasks against quadprog
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_active_set_equals_quadprog(method, monkeypatch):
    """mtbench's block principal pivoting solves the same QPs as torchjd's quadprog: the same
    weights on the adversarial matrices, on 40 tasks (in 512 and in 10 dimensions) and on 96 in
    30, cold and warm-started from another matrix's free sets; quadprog takes over the rows on
    which the pivoting does not settle, and every row if a factorisation fails."""
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(5)
    cases = dict(MATS)
    # 96 tasks in 30 dimensions (the batched pivoting, from 64 tasks on): free sets of many sizes
    # (each row's system padded to the largest), and rows on which the pivoting does not settle
    # (11 of the 96 here: quadprog solves those rows)
    for name, tasks, dim in (("t40", 40, 512), ("t40_d10", 40, 10), ("t96_d30", 96, 30)):
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


@pytest.mark.slow  # the solvers at 96 and 100 tasks against quadprog
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_conjugate_gradients_at_many_tasks(method, monkeypatch):
    """From 64 tasks on the pivoting's systems are solved by conjugate gradients. 100 tasks in
    1024 dimensions, 30 of them against the others: the weights are quadprog's, and the
    factorisations' (conjugate gradients held to no iteration: Cholesky solves every row)
    with the same free sets; UPGrad's 100 QPs factorise only in sweeps with small free sets
    (DualProj's one free set, the 30 correlated tasks, is ill-conditioned: Cholesky may take it). 96 tasks in
    30 dimensions (a singular Gram matrix, the ridge its only curvature): they do not
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
    K = torch.randn(96, 30, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        30, generator=gen, dtype=torch.float64
    )
    got, _ = dual_cone_state(K @ K.T, method)
    assert factorised
    close(got @ K, dual_cone_state(K @ K.T, method, "quadprog")[0] @ K, floor=float(K.sum(0).norm()))

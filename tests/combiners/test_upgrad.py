"""UPGrad and DualProj's dual-cone solver (mtbench/combiners/upgrad.py, dualproj.py): no conflict with
any task, and the compiled pivoting and its one-call path against quadprog."""

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
    weights on the adversarial matrices, on 40 tasks (in 512 and in 10 dimensions), on 96 in 30
    (a singular Gram matrix, the ridge its only curvature) and on 100 in 1024 (30 of them
    against the others), cold and warm-started from another matrix's free sets; quadprog takes
    over the rows on which the pivoting does not settle, and every row if a factorisation fails."""
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(5)
    cases = dict(MATS)
    for name, tasks, dim in (("t40", 40, 512), ("t40_d10", 40, 10), ("t96_d30", 96, 30)):
        cases[name] = 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64) + torch.randn(
            tasks, dim, generator=gen, dtype=torch.float64
        )
    shared = torch.randn(1024, generator=gen, dtype=torch.float64)
    cases["t100_opposed"] = torch.randn(100, 1024, generator=gen, dtype=torch.float64) + 0.3 * shared
    cases["t100_opposed"][:30] -= 0.6 * shared
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
    # a failed factorisation: quadprog solves every row, no state
    import mtbench.combiners.solvers.dual_cone_compiled as loops

    real_pivots = loops.dual_cone_pivots
    monkeypatch.setattr(loops, "dual_cone_weights", lambda *a: False)  # (its pivots are compiled in: the general path)
    monkeypatch.setattr(loops, "dual_cone_pivots", lambda a, *rest: real_pivots(-a, *rest))  # A indefinite
    fallback, state = dual_cone_state(J @ J.T, method)
    assert state is None
    torch.testing.assert_close(fallback, quadprog, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_pivoting_equals_quadprog_on_both_sides_of_64_tasks(method):
    """The compiled pivoting at 40 and at 80 tasks (in 512 dimensions, a shared component: many
    conflicts) gives quadprog's combined gradient, cold and warm-started from a nearby
    problem's free sets."""
    from mtbench.combiners.functional import dual_cone_state

    gen = torch.Generator().manual_seed(11)
    for tasks in (40, 80):
        J = 0.3 * torch.randn(512, generator=gen, dtype=torch.float64) + torch.randn(
            tasks, 512, generator=gen, dtype=torch.float64
        )
        G = J @ J.T
        moved = J + 0.3 * torch.randn(J.shape, generator=gen, dtype=torch.float64)
        _, start = dual_cone_state(moved @ moved.T, method)
        ref = dual_cone_state(G, method, "quadprog")[0] @ J
        for s in (None, start):
            close(dual_cone_state(G, method, start=s)[0] @ J, ref, floor=float(J.sum(0).norm()))


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_one_call_is_the_general_path(method, monkeypatch):
    """The whole solve from the Gram matrix is one compiled call
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

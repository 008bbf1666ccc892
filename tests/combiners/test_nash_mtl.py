"""Nash-MTL (mtbench/combiners/nash_mtl.py): the bargaining equation, torchjd where its iterations
converge, rescaling and clipping, no solution, and its state."""

from __future__ import annotations

import pytest
import torch
import torchjd.aggregation as jd
from gram_matrices import MATS, build, close

from mtbench.combiners import functional as F


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
    for name in ("opposing", "T_gt_D"):
        J = MATS[name]
        out = F.nash_mtl(J)
        assert bool(torch.isfinite(out).all()), name
    g = MATS["agreeing"][0]
    assert float(F.nash_mtl(torch.stack([g, -g])).norm()) < 1e-6 * float(g.norm())


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

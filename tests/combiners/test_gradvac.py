"""GradVac (mtbench/combiners/gradvac.py) against torchjd over steps with the same draws, and its state."""

from __future__ import annotations

import pytest
import torch
import torchjd.aggregation as jd
from gram_matrices import MATS, build, close

from mtbench.combiners import functional as F


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
    J = MATS["opposing"]
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

"""Uncertainty weighting (mtbench/combiners/uw.py) against the paper's objective."""

from __future__ import annotations

import math

import pytest
import torch
from loss_steps import backward_of

from mtbench.combiners import COMBINERS
from mtbench.errors import MtbenchError


def test_uw_first_steps_follow_the_papers_objective():
    lr = 0.1
    comb = COMBINERS["uw"](2, weight_lr=lr)
    # step 1: s = (0, 0), w = exp(-s) = (1, 1): the baseline's gradient (2 th_0, 3) = (2, 3)
    assert backward_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 3.0], rel=1e-12)
    # the gradient of exp(-s) L + s/2 in s at L = (1, 6): 1/2 - L = (-0.5, -5.5); Adam's first step
    # is lr * g / (|g| + eps) against g (bias corrections cancel), so s = lr * (|g| / (|g| + 1e-8))
    s = [lr * 0.5 / (0.5 + 1e-8), lr * 5.5 / (5.5 + 1e-8)]
    torch.testing.assert_close(comb.log_var.detach(), torch.tensor(s, dtype=torch.float64), rtol=1e-12, atol=0)
    # step 2 at th = (1, 2): w = exp(-s)
    grad = backward_of(comb, [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * math.exp(-s[0]), 3 * math.exp(-s[1])], rel=1e-12)
    assert comb.log_values() == pytest.approx({"w_min": math.exp(-s[1]), "w_max": math.exp(-s[0])}, rel=1e-12)


def test_uw_weights_come_to_rest_at_one_over_twice_the_loss():
    # minimum of exp(-s) L + s/2 in s: exp(-s) = 1 / (2 L); here L = (1, 6): w = (1/2, 1/12)
    comb = COMBINERS["uw"](2, weight_lr=0.02)
    for _ in range(1500):
        backward_of(comb, [1.0, 2.0])
    w = torch.exp(-comb.log_var.detach())
    assert w.tolist() == pytest.approx([0.5, 1 / 12], rel=0.05)


def test_uw_bad_learning_rate_is_one_line():
    with pytest.raises(
        MtbenchError, match=r"^combiner.weight_lr must be a positive number for combiner=uw \(got -1\)$"
    ):
        COMBINERS["uw"](2, weight_lr=-1)

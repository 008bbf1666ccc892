"""FAMO (mtbench/combiners/famo.py) against the paper's update."""

from __future__ import annotations

import math

import pytest
from loss_steps import backward_of

from mtbench.combiners import COMBINERS
from mtbench.errors import MtbenchError


def test_famo_first_steps_follow_the_papers_update():
    lr = 0.1
    comb = COMBINERS["famo"](2, weight_lr=lr)
    # step 1, L = (1, 6), xi = 0, z = (1/2, 1/2): w = 2 (z / L) / sum(z / L) = (12/7, 2/7)
    grad = backward_of(comb, [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * 12 / 7, 3 * 2 / 7], rel=1e-7)
    # step 2, L = (0.25, 3): delta = log(1/0.25), log(6/3) = (2 log 2, log 2); z . delta = 1.5 log 2;
    # the logits' gradient z * (delta - z . delta) = (log 2 / 4, -log 2 / 4), Adam's first step against
    # its sign: xi = (-lr, lr); z = softmax(xi); w = 2 (z / L) / sum(z / L)
    grad = backward_of(comb, [0.5, 1.0])
    z0, z1 = math.exp(-lr) / (math.exp(-lr) + math.exp(lr)), math.exp(lr) / (math.exp(-lr) + math.exp(lr))
    q0, q1 = z0 / 0.25, z1 / 3
    w = [2 * q0 / (q0 + q1), 2 * q1 / (q0 + q1)]
    assert comb.logits.detach().tolist() == pytest.approx([-lr, lr], rel=1e-6)
    assert grad.tolist() == pytest.approx([w[0] * 2 * 0.5, w[1] * 3], rel=1e-6)
    # the task whose loss fell faster (task 0, 4x against 2x) lost weight against z = 1/2 each
    assert z0 < 0.5 < z1
    assert sum(w) == pytest.approx(2.0, rel=1e-12)


def test_famo_weights_sum_to_t_and_gamma_pulls_the_logits_back():
    comb = COMBINERS["famo"](2, weight_lr=0.1, gamma=0.5)
    backward_of(comb, [1.0, 2.0])
    backward_of(comb, [0.5, 1.0])  # xi = (-0.1, 0.1)
    size = float(comb.logits.detach().abs().sum())
    for _ in range(30):  # the same losses again and again: delta = 0, only the decay moves xi
        backward_of(comb, [0.5, 1.0])
    assert float(comb.logits.detach().abs().sum()) < size / 2
    assert float(comb.last_weights.sum()) == pytest.approx(2.0, rel=1e-12)


def test_famo_bad_options_are_one_line():
    with pytest.raises(MtbenchError, match=r"^combiner.gamma must be a finite number >= 0 \(got -0.1\)$"):
        COMBINERS["famo"](2, gamma=-0.1)
    with pytest.raises(
        MtbenchError, match=r"^combiner.weight_lr must be a positive number for combiner=famo \(got 0\)$"
    ):
        COMBINERS["famo"](2, weight_lr=0)

"""The loss-level combiners (uw, dwa, rlw, gls, famo) against their papers' update rules on
two-task cases whose numbers are computed here by hand, and end to end from the CLI.

Each case trains two scalar parameters th = (th_0, th_1) whose task losses are explicit
(e.g. L = (th_0^2, 3 th_1)), so the expected gradient th.grad = sum_i w_i dL_i/dth is a
closed-form number."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import TINY, run_cli, run_dir
from mtbench import MtbenchError
from mtbench.combiners import COMBINERS, PAPER, Step

LOSS_LEVEL = ["gls"]


def scalar_step(th: torch.Tensor, losses: torch.Tensor, gen_seed: int = 0) -> Step:
    """A step whose 'model' is the two parameters th (no trunk, no heads: the loss-level
    combiners need the losses only)."""
    g = torch.Generator().manual_seed(gen_seed)
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses, generator=g, cpu_generator=g)  # type: ignore[arg-type]


def backward_of(comb, values, gen_seed: int = 0) -> torch.Tensor:
    """th.grad after ``comb.backward`` on L = (th_0^2, 3 th_1) at th = values."""
    th = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    losses = torch.stack([th[0] ** 2, 3 * th[1]])
    comb.backward(scalar_step(th, losses, gen_seed))
    return th.grad


def test_loss_level_combiners_come_after_the_papers_nine():
    names = list(COMBINERS)
    assert names[: len(PAPER)] == list(PAPER)
    for name in LOSS_LEVEL:
        assert names.index(name) >= len(PAPER)


# -- gls ---------------------------------------------------------------------------------------


def test_gls_is_t_times_the_geometric_mean():
    # th = (1, 2): L = (1, 6), G = sqrt(6), w = (G / 1, G / 6); dL_0/dth_0 = 2, dL_1/dth_1 = 3
    grad = backward_of(COMBINERS["gls"](2), [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * math.sqrt(6), 3 * math.sqrt(6) / 6], rel=1e-12)
    # the same as the gradient of 2 sqrt(L_0 L_1) = 2 sqrt(3 th_0^2 th_1) = 2 sqrt(3) |th_0| sqrt(th_1)
    assert grad.tolist() == pytest.approx([2 * math.sqrt(3) * math.sqrt(2), 2 * math.sqrt(3) / (2 * math.sqrt(2))], rel=1e-12)
    # equal losses: the baseline's gradient (weights 1 each)
    th = torch.tensor([2.0, 4.0 / 3.0], dtype=torch.float64, requires_grad=True)  # L = (4, 4)
    COMBINERS["gls"](2).backward(scalar_step(th, torch.stack([th[0] ** 2, 3 * th[1]])))
    assert th.grad.tolist() == pytest.approx([4.0, 3.0], rel=1e-12)

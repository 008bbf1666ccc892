"""Geometric loss strategy (mtbench/combiners/gls.py): T times the geometric mean."""

from __future__ import annotations

import math

import pytest
import torch
from loss_steps import backward_of, scalar_step

from mtbench.combiners import COMBINERS


def test_gls_is_t_times_the_geometric_mean():
    # th = (1, 2): L = (1, 6), G = sqrt(6), w = (G / 1, G / 6); dL_0/dth_0 = 2, dL_1/dth_1 = 3
    grad = backward_of(COMBINERS["gls"](2), [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * math.sqrt(6), 3 * math.sqrt(6) / 6], rel=1e-12)
    # the same as the gradient of 2 sqrt(L_0 L_1) = 2 sqrt(3 th_0^2 th_1) = 2 sqrt(3) |th_0| sqrt(th_1)
    assert grad.tolist() == pytest.approx(
        [2 * math.sqrt(3) * math.sqrt(2), 2 * math.sqrt(3) / (2 * math.sqrt(2))], rel=1e-12
    )
    # equal losses: the baseline's gradient (weights 1 each)
    th = torch.tensor([2.0, 4.0 / 3.0], dtype=torch.float64, requires_grad=True)  # L = (4, 4)
    COMBINERS["gls"](2).backward(scalar_step(th, torch.stack([th[0] ** 2, 3 * th[1]])))
    assert th.grad.tolist() == pytest.approx([4.0, 3.0], rel=1e-12)

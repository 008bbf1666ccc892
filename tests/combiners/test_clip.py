"""Gradient clipping (mtbench/combiners/clip.py): the global norm bound and the direction."""

from __future__ import annotations

import pytest
import torch
from model_steps import (
    baseline_grads,
    flat,
    run_combiner,
)


def test_clip_bounds_the_global_norm_and_keeps_direction():
    base = flat(baseline_grads())
    got = flat(run_combiner("clip", max_norm=0.01)[2])
    assert got.norm().item() == pytest.approx(0.01, rel=1e-3)  # torch divides by (norm + 1e-6)
    torch.testing.assert_close(got / got.norm(), base / base.norm())
    big = flat(run_combiner("clip", max_norm=1e6)[2])
    torch.testing.assert_close(big, base)

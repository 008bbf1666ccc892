"""GradNorm followed by GradDrop (mtbench/combiners/gradnorm_graddrop.py)."""

from __future__ import annotations

import torch
from model_steps import (
    assert_close_list,
    flat,
    run_combiner,
)


def test_gradnorm_graddrop_is_gradnorm_when_nothing_is_dropped():
    a = run_combiner("gradnorm")
    b = run_combiner("gradnorm_graddrop", graddrop={"leak": 1.0})
    assert_close_list(b[2], a[2], rtol=1e-12, atol=1e-12)
    c = run_combiner("gradnorm_graddrop")
    assert not torch.allclose(flat(c[2]), flat(a[2]))

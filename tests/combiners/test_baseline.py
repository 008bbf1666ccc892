"""The baseline (the plain sum of the losses): its gradient, the scale every other combiner is compared with."""

from __future__ import annotations

import torch
from model_steps import (
    assert_close_list,
    baseline_grads,
    make_batch,
    make_model,
    step_for,
)


def test_baseline_is_grad_of_sum():
    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    expected = torch.autograd.grad(st.losses.sum(), list(model.parameters()))
    assert_close_list(baseline_grads(), list(expected))

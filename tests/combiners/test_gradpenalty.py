"""The gradient penalty (mtbench/combiners/gradpenalty.py) against finite differences of its objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_steps import (
    B,
    T,
    assert_close_list,
    baseline_grads,
    flat,
    grads_of,
    make_batch,
    make_model,
    step_for,
)

from mtbench.combiners import COMBINERS


@pytest.mark.parametrize("target", ["input", "representation"])
def test_gradpenalty_gradient_matches_finite_differences(target):
    lam = 0.3
    model = make_model()
    x, y = make_batch()

    def objective() -> torch.Tensor:
        xx = x.clone().requires_grad_(True)
        rep, out = model(xx)
        losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
        z = xx if target == "input" else rep
        (g,) = torch.autograd.grad(losses.sum(), z)
        return (losses.sum() + lam * ((B * g).flatten(1) ** 2).sum(1).mean()).detach()

    comb = COMBINERS["gradpenalty"](T, **{"lambda": lam, "target": target})
    comb.backward(step_for(model, x, y, input_grad=comb.needs_input_grad))
    got = flat(grads_of(model))
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    up = objective()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
    down = objective()
    fd = (up - down) / (2 * h)
    assert (got @ flat(direction)).item() == pytest.approx(fd.item(), rel=1e-6)
    # and the penalty matters: lambda = 0 gives the baseline
    zero = COMBINERS["gradpenalty"](T, **{"lambda": 0.0, "target": target})
    model.zero_grad()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    zero.backward(step_for(model, x, y, input_grad=zero.needs_input_grad))
    assert_close_list(grads_of(model), baseline_grads())
    assert not torch.allclose(got, flat(baseline_grads()))

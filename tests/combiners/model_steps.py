"""Shared by the combiner tests: a small float64 multitask model, its batch and step, the
baseline's gradients, per-task gradients by separate backward passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtbench.combiners import COMBINERS, Step
from mtbench.models import LinearHeads, MultiTaskModel

T, B, D_IN, D_REP = 3, 5, 4, 6


def make_model(seed: int = 0, dtype=torch.float64) -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    return MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP).to(dtype)


def make_batch(seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=dtype)
    y = (torch.rand(B, T, generator=g) < 0.5).to(dtype)
    return x, y


def step_for(model, x, y, gen_seed: int = 0, input_grad: bool = False) -> Step:
    x = x.clone().requires_grad_(input_grad)
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    gen = torch.Generator().manual_seed(gen_seed)
    return Step(model, x, rep, out, losses, gen, gen)


def grads_of(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def run_combiner(name: str, seed: int = 0, **options):
    model = make_model(seed)
    x, y = make_batch(seed + 1)
    comb = COMBINERS[name](T, **options)
    comb.backward(step_for(model, x, y, input_grad=comb.needs_input_grad))
    return model, comb, grads_of(model)


def baseline_grads(seed: int = 0):
    return run_combiner("baseline", seed)[2]


def per_task_param_grads(model, x, y):
    """Loop of T separate backward passes: [T, P] over the shared parameters (independent)."""
    rows = []
    for i in range(T):
        st = step_for(model, x, y)
        g = torch.autograd.grad(st.losses[i], model.shared_parameters())
        rows.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(rows)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def assert_close_list(a, b, **kw):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **kw)


def make_conv_model(seed: int = 0, inplace: bool = False) -> MultiTaskModel:
    """A small conv trunk whose last convolution (2x2 output) and linear layer have few
    positions and wide weights: the factored Gram form applies to both. ``inplace``: in-place
    ReLUs right after both (as small_cnn's last linear layer has), so their captured outputs
    hold the activations."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True) if inplace else nn.Tanh(),
    )
    return MultiTaskModel(trunk, LinearHeads(32, T), rep_dim=32).double()


def conv_step(model, gen_seed=0):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(2, T, generator=g) < 0.5).double()
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    gen = torch.Generator().manual_seed(gen_seed)
    return Step(model, x, rep, out, losses, gen, gen)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

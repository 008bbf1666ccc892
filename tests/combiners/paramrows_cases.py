"""Shared inputs of the tests of the parameter-level methods (excess_mtl, db_mtl): adversarial
[T, D] float64 stacks and a tiny two-layer model whose per-task gradients autograd gives
directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gram_matrices import ADVERSARIAL
from torch import nn

from mtbench.combiners import Step
from mtbench.models import LinearHeads, MultiTaskModel

T, B, D_IN, D_REP = 3, 6, 4, 5


#: the adversarial stacks (gram_matrices.py's)
MATS = ADVERSARIAL


def moved(J: torch.Tensor, k: int) -> torch.Tensor:
    """Step k's stack: J moved a little (k = 0: J itself)."""
    if k == 0:
        return J
    gen = torch.Generator().manual_seed(50 + k)
    return J + 0.3 * torch.randn(J.shape, generator=gen, dtype=torch.float64) * J.abs().mean(dim=1, keepdim=True)


def make_model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    return MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP).double()


def make_step(model: MultiTaskModel, seed: int = 1) -> Step:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    y = (torch.rand(B, T, generator=g) < 0.5).double()
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    return Step(model, x, rep, out, losses, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))


def autograd_rows(model: MultiTaskModel, seed: int, fn=lambda losses: losses):
    """Per-task gradients of ``fn(losses)`` straight from autograd: the shared rows [T, P] and
    each head's gradient (the sum over tasks: each head reads only its own task)."""
    step = make_step(model, seed)
    objectives = fn(step.losses)
    shared = list(model.trunk.parameters())
    rows = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, shared, retain_graph=True)]) for o in objectives]
    )
    heads = torch.autograd.grad(objectives.sum(), list(model.heads.parameters()))
    return rows, heads, step.losses.detach()


def shared_grad(model: MultiTaskModel) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])


def assert_resumes_to_the_same_updates(make) -> dict:
    """A combiner ``make()`` after one step, its state saved; two more steps of it, then of a
    fresh ``make()`` loaded from that state: the same shared gradients, bit for bit. Returns the
    saved state."""
    model = make_model()
    a = make()
    a.backward(make_step(model, 1))
    saved = a.state_dict()
    ref = []
    for seed in (2, 3):
        model.zero_grad(set_to_none=True)
        a.backward(make_step(model, seed))
        ref.append(shared_grad(model).clone())
    b = make()
    b.load_state_dict(saved)
    for seed, expected in zip((2, 3), ref):
        model.zero_grad(set_to_none=True)
        b.backward(make_step(model, seed))
        assert torch.equal(shared_grad(model), expected)
    return saved

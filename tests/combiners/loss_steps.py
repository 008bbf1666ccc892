"""Shared by the loss-level combiners' tests: a step on scalar parameters with given losses."""

from __future__ import annotations

import torch

from mtbench.combiners import Step

LOSS_LEVEL = ["uw", "dwa", "rlw", "gls", "famo"]


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

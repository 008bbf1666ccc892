"""The multitask network: a shared trunk, the shared representation, one head per task."""

from __future__ import annotations

import torch
from torch import nn


class LinearHeads(nn.Module):
    """T independent linear heads on a D-dim representation, stored as one [T, D] matrix.

    Row i (and bias i) is head i: it reads the representation and produces task i's logit.
    Because head i's parameters only enter task i's output, the gradient of a sum of task
    losses with respect to row i is exactly task i's own gradient, as with T separate
    ``nn.Linear(D, 1)`` modules; one matmul is much faster than T small ones.
    """

    def __init__(self, rep_dim: int, num_tasks: int):
        super().__init__()
        self.linear = nn.Linear(rep_dim, num_tasks)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.linear(rep.flatten(1))


class MultiTaskModel(nn.Module):
    """``trunk(x) -> rep`` (the shared representation, shape [B, *F]) ``-> heads(rep)``.

    ``forward`` returns both the representation and the heads' outputs, so a combiner can
    take per-task gradients at the representation (where GradDrop sits).
    """

    def __init__(self, trunk: nn.Module, heads: nn.Module, rep_dim: int):
        super().__init__()
        self.trunk = trunk
        self.heads = heads
        self.rep_dim = rep_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.trunk(x)
        return rep, self.heads(rep)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

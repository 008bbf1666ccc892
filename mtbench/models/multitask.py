"""The multitask network: a shared trunk, the shared representation, one head per task.

What the combiners read of a model is the small protocol :class:`MultiTaskNet` (a structural
type: any module with these members takes the combiners' fast paths, a :class:`MultiTaskModel`
has them all):

* ``trunk``: the shared module, ``trunk(x) -> rep``;
* ``shared_parameters()``: the trainable parameters of the trunk (the per-task gradients of
  PCGrad and MGDA at ``level: params`` are taken with respect to these);
* ``head_parameters()``: the trainable parameters of the heads (each receives its own loss's
  gradient);
* ``linear_heads()``: the :class:`LinearHeads` when the model's outputs are exactly
  ``heads.linear(rep.flatten(1))``, else None; the combiners then take the per-task gradients
  at the representation by the chain rule through the heads' weight.

A model without ``linear_heads`` takes the general path (batched autograd calls through its
heads); one without ``shared_parameters`` has every trainable parameter treated as shared.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class MultiTaskNet(Protocol):
    """The members of a multitask model that the combiners use (see the module docstring)."""

    trunk: nn.Module

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def head_parameters(self) -> list[nn.Parameter]: ...

    def linear_heads(self) -> LinearHeads | None: ...


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

    def linear_heads(self) -> LinearHeads | None:
        """The heads when ``forward``'s outputs are exactly ``heads.linear(rep.flatten(1))``: the
        stock ``forward`` of this class and of :class:`LinearHeads` (a subclass that overrides
        either one has no linear heads unless it overrides this method too); else None."""
        heads = self.heads
        if type(self).forward is not MultiTaskModel.forward:
            return None
        if not isinstance(heads, LinearHeads) or type(heads).forward is not LinearHeads.forward:
            return None
        return heads

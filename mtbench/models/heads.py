"""Task heads built from the task's description of them (``Task.head_spec()``, a
:class:`mtbench.data.base.HeadSpec`): the task says what its heads produce, this module builds
the modules that read the shared representation."""

from __future__ import annotations

import torch
from torch import nn

from mtbench.data.base import HeadSpec
from mtbench.errors import MtbenchError
from mtbench.models.multitask import LinearHeads

__all__ = ["LinearHeads", "NamedHeads", "build_heads"]


class NamedHeads(nn.Module):
    """One linear head per name on the (flattened) representation; ``forward`` returns a dict
    of logits by name, in the order of ``outputs``. ``init[name] = (weight, bias)`` is copied
    into that head (e.g. a pretrained classifier kept as a head); each name in ``absent`` is an
    attribute that is None (an optional head that is not there)."""

    def __init__(
        self,
        rep_dim: int,
        outputs: dict[str, int],
        init: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        absent: tuple[str, ...] = (),
    ):
        super().__init__()
        init = init or {}
        for name, (weight, _) in init.items():
            if weight.shape[1] != rep_dim:
                raise MtbenchError(
                    f"the {name} head's initial weights (a pretrained classifier) read {weight.shape[1]} features but the trunk gives {rep_dim}"
                )
        self.names = list(outputs)
        for name, width in outputs.items():  # created in this order: the initialisation draws in it
            head = nn.Linear(rep_dim, int(width) if name not in init else init[name][0].shape[0])
            if name in init:
                with torch.no_grad():
                    head.weight.copy_(init[name][0])
                    head.bias.copy_(init[name][1])
            setattr(self, name, head)
        for name in absent:
            setattr(self, name, None)

    def forward(self, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        rep = rep.flatten(1)
        return {name: getattr(self, name)(rep) for name in self.names}


def build_heads(spec: HeadSpec, rep_dim: int) -> nn.Module:
    """The heads that ``spec`` describes on a ``rep_dim``-wide representation: ``LinearHeads``
    (T logits stacked [B, T]) for an int, ``NamedHeads`` for a dict of names and widths."""
    if isinstance(spec.outputs, int):
        return LinearHeads(rep_dim, spec.outputs)
    return NamedHeads(rep_dim, dict(spec.outputs), dict(spec.init), tuple(spec.absent))

"""Gradient clipping."""

from __future__ import annotations

import torch

from mtbench.combiners import distributed
from mtbench.combiners.base import Combiner, Step, positive
from mtbench.options import Option


class Clip(Combiner):
    """The baseline's gradients, then their global L2 norm clipped to ``max_norm``.

    The norm is taken over every trainable parameter at once (shared trunk and heads):
    if ``||g||_2 > max_norm`` all gradients are scaled by ``max_norm / ||g||_2``.
    """

    name = "clip"
    style = ("#8c564b", "s")
    ddp = "the gradients summed before the norm is taken (the global batch's norm)"
    options = {"max_norm": Option(1.0, "the largest global L2 norm of all gradients", positive())}

    def backward(self, step: Step) -> None:
        step.losses.sum().backward()
        params = [p for p in step.model.parameters() if p.grad is not None]
        distributed.sum_grads(params, step.group)  # the global batch's gradients, then their norm
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)

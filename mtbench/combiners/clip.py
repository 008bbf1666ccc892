"""Gradient clipping."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Combiner, Step


class Clip(Combiner):
    """The baseline's gradients, then their global L2 norm clipped to ``max_norm``.

    The norm is taken over every trainable parameter at once (shared trunk and heads):
    if ``||g||_2 > max_norm`` all gradients are scaled by ``max_norm / ||g||_2``.

    Options: ``max_norm`` (default 1.0).
    """

    name = "clip"
    defaults = {"max_norm": 1.0}

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        self.max_norm = self.check_positive("max_norm", self.max_norm)

    def backward(self, step: Step) -> None:
        step.losses.sum().backward()
        params = [p for p in step.model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)

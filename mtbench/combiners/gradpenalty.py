"""Gradient penalty by double backpropagation."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners import distributed
from mtbench.combiners.base import Combiner, Step, one_of
from mtbench.options import Option, number


class GradPenalty(Combiner):
    """The baseline's loss plus a gradient penalty (double backpropagation, Drucker &
    LeCun 1992), the paper's "gradient penalty" comparison:

        sum_i L_i + lambda * mean_b || d l_b / d z_b ||_2^2

    with l_b = sum_i l_{i,b} example b's summed task loss and z_b its input
    (``target: input``) or its shared representation (``target: representation``).
    Computed as B * d(sum_i L_i)/dz_b (the task losses are batch means), which equals
    d l_b / d z_b when examples do not interact (BatchNorm in training mode couples them
    slightly; we keep its cross-example terms). The penalty is differentiated through
    (``create_graph``), so every parameter, heads included, receives its gradient.
    """

    name = "gradpenalty"
    style = ("#bcbd22", "^")
    ddp = "nothing beyond the gradients summed once: the penalty is a mean over examples, each rank's share of it local"
    options = {
        "lambda": Option(0.01, "weight of the penalty", number(minimum=0)),
        "target": Option("input", "z_b: input | representation", one_of("input", "representation")),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.lam = getattr(self, "lambda")
        self.needs_input_grad = self.target == "input"

    def representation_use(self) -> str | None:
        return "combiner.target=input" if self.target == "representation" else None

    def backward(self, step: Step) -> None:
        total = step.losses.sum()
        z = step.inputs if self.target == "input" else step.rep
        (g,) = torch.autograd.grad(total, z, create_graph=True)
        # under a process group g is already the global batch's gradient at this rank's examples
        # (1 / B_global of each example's): B_global = N B_local, and the mean over the global
        # batch is this rank's mean / N plus the other ranks' (summed with the gradients)
        n = distributed.world_size(step.group)
        per_example = (g * (g.shape[0] * n)).flatten(1).pow(2).sum(1)
        # only the parameters: the input's own gradient (target: input) is not needed
        params = [p for p in step.model.parameters() if p.requires_grad]
        torch.autograd.backward(total + self.lam * per_example.mean() / n, inputs=params)

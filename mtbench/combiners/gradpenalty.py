"""Gradient penalty by double backpropagation."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Combiner, Step, check_choice
from mtbench.options import check_number


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

    Options: lambda (0.01); target (input).
    """

    name = "gradpenalty"
    defaults: dict[str, Any] = {"lambda": 0.01, "target": "input"}

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        check_choice("target", self.target, ("input", "representation"), self.name)
        self.lam = check_number("combiner.lambda", self.opts["lambda"], minimum=0)
        self.needs_input_grad = self.target == "input"

    def backward(self, step: Step) -> None:
        total = step.losses.sum()
        z = step.inputs if self.target == "input" else step.rep
        (g,) = torch.autograd.grad(total, z, create_graph=True)
        per_example = (g * g.shape[0]).flatten(1).pow(2).sum(1)
        # only the parameters: the input's own gradient (target: input) is not needed
        params = [p for p in step.model.parameters() if p.requires_grad]
        torch.autograd.backward(total + self.lam * per_example.mean(), inputs=params)

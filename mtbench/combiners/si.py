"""SI: the sum of the logarithms of the task losses (scale-invariant)."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.lossweighted import TINY, LossWeighted


def si_weights(losses: torch.Tensor) -> torch.Tensor:
    """The weights w_i = 1 / L_i of the gradient of sum_i log L_i (losses clamped at 1e-12),
    from the detached losses, in their dtype (at least float32)."""
    dtype = torch.promote_types(losses.dtype, torch.float32)
    return 1.0 / losses.detach().to(dtype).clamp_min(TINY)


class SI(LossWeighted):
    """Scale-invariant loss (the baseline "SI" of Navon et al. 2022, "Multi-Task Learning as a
    Bargaining Game", ICML, Sec. 6): the network is trained on

        L_SI = sum_i log L_i,

    whose gradient is sum_i w_i dL_i with w_i = 1 / L_i (from the detached losses, clamped at
    1e-12; the backward pass is the one of sum_i w_i L_i). Multiplying a task's loss by a
    constant leaves the gradient unchanged: the task with the smaller loss gets the larger
    weight.

    Scale: the gradient of the objective itself, as in the Nash-MTL code's
    ``ScaleInvariantLinearScalarization`` (``sum(log(losses))``): factor 1. It equals the
    baseline's gradient when every loss is 1; losses below 1 give a larger step than the
    baseline's (GLS is this gradient times the losses' geometric mean). No options, no state.
    """

    name = "si"
    style = ("#843c39", "1")

    def task_weights(self, step: Step) -> torch.Tensor:
        """w_i = 1 / L_i."""
        return si_weights(step.losses)

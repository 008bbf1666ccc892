"""GLS: the geometric mean of the task losses."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.lossweighted import TINY, LossWeighted


class GLS(LossWeighted):
    """Geometric loss strategy (Chennupati et al. 2019, "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops): the
    network is trained on the geometric mean of the T task losses, times T,

        L_GLS = T * (prod_i L_i)^(1/T) = T * exp(mean_i log L_i),

    whose gradient is sum_i w_i dL_i with w_i = G / L_i, G the geometric mean of the losses
    (computed from the detached losses, clamped at 1e-12; the backward pass is the one of
    sum_i w_i L_i). The task with the smaller loss gets the larger weight.

    Scale: the paper's objective is (prod_i L_i)^(1/T), whose weights G / (T L_i) sum to 1
    when the losses are equal; mtbench's is T times it (weights summing to T when the losses
    are equal: the baseline's scale). LibMTL's GLS is the paper's objective, 1/T of this
    gradient. No options, no state.
    """

    name = "gls"
    style = ("#98df8a", "p")

    def task_weights(self, step: Step) -> torch.Tensor:
        """w_i = G / L_i, G the geometric mean of the losses."""
        log = step.losses.detach().to(self.state_dtype(step.losses)).clamp_min(TINY).log()
        return (log.mean() - log).exp()

"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import pcgrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted


class PCGrad(GramWeighted):
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task i, visiting the other tasks in a fresh random order, if the current g_i
    conflicts with the ORIGINAL g_j (g_i . g_j < 0) it is projected onto the normal plane
    of g_j; the projected gradients are SUMMED (the baseline's scale; some ports average).
    Only the shared gradients are projected: each head gets its own loss's gradient (a
    head's parameters receive no other task's gradient, so projecting them would only
    leak other heads' gradients into it).

    The projections run on the T x T float64 Gram matrix of the g_i (same projections, same
    random orders as :func:`functional.pcgrad`), which gives the summed output as a
    combination sum_k c_k g_k (:func:`functional.pcgrad_weights_from_gram`). Options: those of
    :class:`GramWeighted`, ``level`` defaulting to ``params`` (the paper's).
    """

    name = "pcgrad"
    style = ("#ff7f0e", "v")
    options = GramWeighted.level_default("params")

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        return pcgrad_weights_from_gram(gram, generator=step.cpu_generator)

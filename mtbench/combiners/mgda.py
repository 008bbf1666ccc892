"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.functional import mgda_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.options import Option, boolean

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(WarmStarted):
    """MGDA (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization").

    Weights w on the simplex minimising || sum_i w_i g_i / n_i ||^2 (Sec. 3.1, eq. 3),
    n_i the normaliser of ``normalization`` as in the authors' code: none (1), l2
    (||g_i||), loss (L_i), loss+ (L_i ||g_i||). Solved exactly for two tasks and to a
    relative duality gap of 1e-10 for more (:func:`functional.mgda_weights_from_gram`).
    The weights then multiply the raw losses, as in the original code: the shared
    parameters get T * sum_i w_i dL_i/dtheta (``rescale: true``, the baseline's scale; the
    convex combination without the factor T is a T-times smaller step) and each head gets
    its own loss's gradient. ``level: representation`` (the default) is MGDA-UB (Sec. 3.3).

    Each solve is warm-started from the last step's weights (their tasks are Wolfe's first
    active set: a few affine solves instead of about T; from 64 tasks on, block pivots from
    that active set first); those weights are the combiner's state, saved in checkpoints, so a
    resumed run takes the same iterations.
    """

    name = "mgda"
    style = ("#9467bd", "D")
    options = {
        **GramWeighted.level_default("representation"),
        "normalization": Option(
            "none", "the normaliser n_i of each gradient: none | l2 | loss | loss+", one_of(*NORMALIZATIONS)
        ),
        "rescale": Option(True, "multiply the shared gradient by T (the baseline's scale)", boolean()),
    }

    def weights_from_gram(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Simplex weights (float64) from the Gram matrix of the per-task gradients and the losses."""
        gram = gram.detach().to(device="cpu", dtype=torch.float64)
        if self.normalization != "none":  # (none: every n_i is 1, the division would change nothing)
            norms = gram.diagonal().clamp_min(0).sqrt()
            loss = losses.detach().to(device="cpu", dtype=torch.float64)
            n = {"l2": norms, "loss": loss, "loss+": loss * norms}[self.normalization]
            n = torch.where(n > 0, n, torch.ones_like(n))  # a zero gradient or loss stays as it is
            gram = gram / (n[:, None] * n[None, :])
        # as in the authors' code: the weights found for the normalised g_i / n_i multiply
        # the raw losses (they are not divided by n_i again)
        self.start = mgda_weights_from_gram(gram, start=self.start)
        return self.start

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        scale = self.num_tasks if self.rescale else 1.0
        return self.weights_from_gram(gram, step.losses).to(step.rep.dtype) * scale

"""GradNorm + GradDrop, the paper's pairing, composed from the two combiners."""

from __future__ import annotations

from mtbench.combiners.compose import Reweighted
from mtbench.combiners.graddrop import GradDrop
from mtbench.combiners.gradnorm import GradNorm


class GradNormGradDrop(Reweighted):
    """GradNorm's task weights w (learned as in ``gradnorm``) re-weight the losses, and
    GradDrop combines the per-task gradients of w_i L_i at the representation.

    Options: ``gradnorm`` (GradNorm's options) and ``graddrop`` (GradDrop's options).
    """

    name = "gradnorm_graddrop"
    defaults = {"gradnorm": {}, "graddrop": {}}
    weighting_cls = GradNorm
    combine_cls = GradDrop

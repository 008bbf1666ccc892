"""GradNorm + GradDrop, the paper's pairing, composed from the two combiners."""

from __future__ import annotations

from mtbench.combiners.compose import Reweighted
from mtbench.combiners.graddrop import GradDrop
from mtbench.combiners.gradnorm import GradNorm
from mtbench.options import Option


class GradNormGradDrop(Reweighted):
    """GradNorm's task weights w (learned as in ``gradnorm``) re-weight the losses, and
    GradDrop combines the per-task gradients of w_i L_i at the representation.

    The config file composes the two pieces' own config files (its defaults list).
    """

    name = "gradnorm_graddrop"
    style = ("#1f77b4", "h")
    options = {
        "gradnorm": Option({}, "GradNorm's options (see gradnorm)"),
        "graddrop": Option({}, "GradDrop's options (see graddrop)"),
    }
    weighting_cls = GradNorm
    combine_cls = GradDrop

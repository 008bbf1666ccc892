"""The sum-of-losses baseline."""

from __future__ import annotations

from mtbench.combiners.base import Combiner, Step


class Baseline(Combiner):
    """Backward of the plain sum of task losses, sum_i L_i (the paper's baseline).

    Every other combiner's shared-parameter gradient is on this scale.
    """

    name = "baseline"
    style = ("#333333", "o")
    ddp = "the gradients summed once (what DDP sends)"

    def backward(self, step: Step) -> None:
        step.losses.sum().backward()

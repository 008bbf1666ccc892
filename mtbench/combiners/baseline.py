"""The sum-of-losses baseline."""

from __future__ import annotations

from mtbench.combiners.base import Combiner, Step


class Baseline(Combiner):
    """Backward of the plain sum of task losses, sum_i L_i (the paper's baseline).

    Every other combiner's shared-parameter gradient is on this scale.
    """

    name = "baseline"
    style = ("#333333", "o")

    def backward(self, step: Step) -> None:
        step.losses.sum().backward()
        if step.group is not None:  # DDP: the mean over the ranks is the single-process gradient
            import torch.distributed as dist

            for p in step.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=step.group)
                    p.grad.div_(dist.get_world_size(step.group))

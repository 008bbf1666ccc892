"""The base of the loss-level combiners: one weight per task, no per-task gradients."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Combiner, Step

#: losses are clamped at this value where their logarithm or a division by them is taken
TINY = 1e-12


class LossWeighted(Combiner):
    """A combiner that trains on sum_i w_i L_i with weights computed from scalars only (the
    losses, the combiner's state, its random draws): no per-task gradient is formed, and the
    step costs one backward pass, as the baseline's. Subclasses implement ``task_weights``
    (detached weights [T], in ``state_dtype``, on the losses' device; no host synchronisation).

    Each head gets its own loss's gradient times its task's weight; ``history.csv`` logs the
    range of the last step's weights (``combiner_w_min``, ``combiner_w_max``).

    Under DistributedDataParallel the weights (and any state they keep) are computed from the
    global batch's losses (the T losses all-reduced, ``Step.group``), so every rank computes the
    same weights; then the gradients are summed once, as DDP does (``ddp``).
    """

    ddp = "the T losses (then the gradients summed once)"

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        #: the weights of the last step (for ``log_values``)
        self.last_weights: torch.Tensor | None = None

    @staticmethod
    def state_dtype(losses: torch.Tensor) -> torch.dtype:
        """The dtype of the weights and the state: the losses' own, at least float32 (bf16
        losses under autocast do not make bf16 state)."""
        return torch.promote_types(losses.dtype, torch.float32)

    def task_weights(self, step: Step) -> torch.Tensor:
        """This step's weights w [T] (detached)."""
        raise NotImplementedError

    def backward(self, step: Step) -> None:
        w = self.task_weights(step).detach()
        self.last_weights = w
        (w * step.losses).sum().backward()

    def log_values(self) -> dict[str, float]:
        if self.last_weights is None:
            return {}
        w = self.last_weights
        return {"w_min": float(w.min()), "w_max": float(w.max())}

"""DWA: task weights from the rate at which each task's epoch-mean loss falls."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.lossweighted import TINY, LossWeighted
from mtbench.options import Option


class DWA(LossWeighted):
    """Dynamic weight average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning
    with Attention", CVPR, eq. 7): with Lbar_i(e) the mean of task i's training losses over
    the steps of epoch e, the weights of epoch e are

        r_i = Lbar_i(e-1) / Lbar_i(e-2),    w_i = T exp(r_i / temperature) / sum_j exp(r_j / temperature),

    and w_i = 1 during the first two epochs. A task whose loss fell less over the last epoch
    (a larger ratio) gets a larger weight; the network is trained on sum_i w_i L_i.

    The epoch's losses are summed on the device at every step (no host synchronisation);
    at the end of each epoch (``end_epoch``, called by the trainer) the mean is taken and
    the next epoch's weights are computed. The running sum, the step count, the last two
    epoch means and the weights are combiner state, so a run resumed mid-epoch ends with
    the numbers of an uninterrupted one.

    Scale: the paper's weights already sum to T (its K), as here; LibMTL's DWA is the same
    (it averages the losses of each epoch's batches in the same way). Losses are clamped at
    1e-12 in the ratio. Outside the trainer (no epochs: ``end_epoch`` never called) the
    weights stay 1.
    """

    name = "dwa"
    style = ("#393b79", "3")
    options = {
        "temperature": Option(
            2.0, "the softmax temperature of the loss ratios (larger: weights closer to 1)", positive()
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: this epoch's weights [T]; the sum of this epoch's losses [T] and its number of steps
        self.weights: torch.Tensor | None = None
        self.epoch_sum: torch.Tensor | None = None
        self.epoch_steps = 0
        #: the mean losses of the last (at most) two finished epochs, oldest first
        self.means: list[torch.Tensor] = []

    def _on(self, like: torch.Tensor) -> None:
        """The state on the losses' device and dtype (after a checkpoint was loaded on the host)."""
        dtype = self.state_dtype(like)
        if self.weights is None:
            self.weights = torch.ones(self.num_tasks, dtype=dtype, device=like.device)
            self.epoch_sum = torch.zeros_like(self.weights)
        elif self.weights.device != like.device or self.weights.dtype != dtype:
            move = {"device": like.device, "dtype": dtype}
            self.weights, self.epoch_sum = self.weights.to(**move), self.epoch_sum.to(**move)
            self.means = [m.to(**move) for m in self.means]

    def task_weights(self, step: Step) -> torch.Tensor:
        losses = step.losses.detach()
        self._on(losses)
        assert self.epoch_sum is not None and self.weights is not None
        self.epoch_sum += losses.to(self.epoch_sum.dtype)
        self.epoch_steps += 1
        return self.weights

    def end_epoch(self) -> None:
        """The epoch's mean losses; from the second epoch on, the next epoch's weights."""
        if self.epoch_steps == 0 or self.epoch_sum is None:
            return
        self.means = [*self.means, self.epoch_sum / self.epoch_steps][-2:]
        self.epoch_sum = torch.zeros_like(self.epoch_sum)
        self.epoch_steps = 0
        if len(self.means) == 2:
            ratio = self.means[1].clamp_min(TINY) / self.means[0].clamp_min(TINY)
            self.weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def state_dict(self) -> dict[str, Any]:
        if self.weights is None:
            return {}
        assert self.epoch_sum is not None
        return {
            "weights": self.weights.clone(),
            "epoch_sum": self.epoch_sum.clone(),
            "epoch_steps": self.epoch_steps,
            "means": [m.clone() for m in self.means],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.weights, self.epoch_sum = state["weights"].clone(), state["epoch_sum"].clone()
        self.epoch_steps = int(state["epoch_steps"])
        self.means = [m.clone() for m in state["means"]]

"""IMTL-L: task weights e^{s_i} from learned loss scales s_i (the loss part of IMTL)."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.learned import LearnedVector
from mtbench.combiners.lossweighted import LossWeighted
from mtbench.options import Option

#: the option of the learned scales' learning rate (``imtl_l`` and ``imtl``)
WEIGHT_LR = Option(0.003, "learning rate of the loss scales s_i (their own Adam)", positive())


class LossScales(LearnedVector):
    """IMTL-L's learned loss scales s [T] (0 at first) and their own Adam: :meth:`step` returns
    e^s at this step's s, then takes one Adam step on the gradient of sum_i e^{s_i} L_i - s_i in
    s, e^{s_i} L_i - 1 (closed form from the detached losses). Created on the losses' device and
    dtype (at least float32) at the first step; a checkpoint loaded before then is applied there."""

    def __init__(self, num_tasks: int, lr: float):
        super().__init__("scales", num_tasks, lr=lr)

    @property
    def scales(self) -> torch.Tensor | None:
        return self.value

    def step(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.detach()
        w = torch.exp(self.ready(losses).detach())
        self.update(w * losses.to(w.dtype) - 1.0)  # d/ds [e^s L - s]
        return w


class IMTLL(LossWeighted):
    """IMTL-L, the loss part of impartial multitask learning (Liu, Li, Kuang, Xue, Chen, Yang,
    Liao & Zhang 2021, "Towards Impartial Multi-task Learning", ICLR, Sec. 3.1, eq. 6 with its
    base a = e): each task has a learned loss scale s_i (0 at first), and the network and the
    scales minimise

        L_IMTL-L = sum_i  e^{s_i} L_i - s_i.

    The network is trained on sum_i w_i L_i with w_i = e^{s_i} at this step's s; the scales take
    one step of their own Adam (``weight_lr``) on the gradient of L_IMTL-L, e^{s_i} L_i - 1
    (closed form from the detached losses: one backward pass per step). At rest e^{s_i} L_i = 1:
    every scaled loss is 1, w_i = 1 / L_i (UW's rest is 1 / (2 L_i)).

    Scale: the weights start at 1 (the baseline's gradient at the first step) and the objective is
    the paper's (factor 1); torchjd's ``IMTLL`` scalarizer and LibMTL's ``IMTL`` (its loss part)
    are the same objective from s = 0. The paper and both codes learn s with the network's
    optimizer; mtbench's optimizer holds the network's parameters only, so s has its own Adam,
    whose default learning rate is the trainer's default ``trainer.lr``. The scales and their
    optimizer's state are combiner state.
    """

    name = "imtl_l"
    style = ("#ad494a", "x")
    options = {"weight_lr": WEIGHT_LR}

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.loss_scales = LossScales(self.num_tasks, self.weight_lr)

    def task_weights(self, step: Step) -> torch.Tensor:
        """w = e^s at this step's s; then one Adam step of s."""
        return self.loss_scales.step(step.losses)

    def state_dict(self) -> dict[str, Any]:
        return self.loss_scales.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_scales.load_state_dict(state)

"""IMTL-L: task weights e^{s_i} from learned loss scales s_i (the loss part of IMTL)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtbench.combiners.base import Step, positive
from mtbench.combiners.lossweighted import LossWeighted
from mtbench.options import Option

#: the option of the learned scales' learning rate (``imtl_l`` and ``imtl``)
WEIGHT_LR = Option(0.003, "learning rate of the loss scales s_i (their own Adam)", positive())


class LossScales:
    """IMTL-L's learned loss scales s [T] (0 at first) and their own Adam: :meth:`step` returns
    e^s at this step's s, then takes one Adam step on the gradient of sum_i e^{s_i} L_i - s_i in
    s, e^{s_i} L_i - 1 (closed form from the detached losses). Created on the losses' device and
    dtype (at least float32) at the first step; a checkpoint loaded before then is applied there."""

    def __init__(self, num_tasks: int, lr: float):
        self.num_tasks, self.lr = num_tasks, lr
        self.scales: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    def step(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.detach()
        if self.scales is None:
            dtype = torch.promote_types(losses.dtype, torch.float32)
            self.scales = torch.zeros(self.num_tasks, device=losses.device, dtype=dtype, requires_grad=True)
            self.optimizer = torch.optim.Adam([self.scales], lr=self.lr)
            if self._pending is not None:
                state, self._pending = self._pending, None
                self.load_state_dict(state)
        assert self.optimizer is not None
        w = torch.exp(self.scales.detach())
        self.scales.grad = w * losses.to(w.dtype) - 1.0  # d/ds [e^s L - s]
        self.optimizer.step()
        return w

    def state_dict(self) -> dict[str, Any]:
        if self.scales is None:
            return {}
        assert self.optimizer is not None
        return copy.deepcopy({"scales": self.scales.detach(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.scales is None:  # the scales live on the training device: restore at the first step
            self._pending = state
            return
        assert self.optimizer is not None
        with torch.no_grad():
            self.scales.copy_(state["scales"])
        self.optimizer.load_state_dict(state["optimizer"])


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

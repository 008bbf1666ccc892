"""A learned vector with its own Adam, created at the first step (the loss-level combiners' state)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from mtbench.combiners.lossweighted import LossWeighted


class LearnedVector:
    """A vector of ``size`` numbers (0 at first) learned by an Adam of its own (``adam``: the
    keyword arguments of ``torch.optim.Adam``, passed on as given). It is created by
    :meth:`ready` on the device of the first step's losses, in their dtype promoted to at least
    float32 (bf16 losses do not make bf16 state); until then :meth:`load_state_dict` keeps the
    checkpoint it is given and applies it there.

    Its checkpoint is ``{key: the vector, "optimizer": Adam's state}`` and any ``extra`` entries
    of the owner after them (``{}`` before the first step); ``on_load`` receives the whole
    checkpoint once the vector holds it, to restore those entries on the vector's device.
    """

    def __init__(
        self,
        key: str,
        size: int,
        on_load: Callable[[dict[str, Any]], None] | None = None,
        **adam: Any,
    ):
        self.key, self.size, self.on_load, self.adam = key, size, on_load, adam
        #: the vector (on the training device from the first step), None before it
        self.value: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    def ready(self, losses: torch.Tensor) -> torch.Tensor:
        """The vector, created on ``losses``' device the first time (a pending checkpoint applied)."""
        if self.value is None:
            dtype = LossWeighted.state_dtype(losses)
            self.value = torch.zeros(self.size, device=losses.device, dtype=dtype, requires_grad=True)
            self.optimizer = torch.optim.Adam([self.value], **self.adam)
            if self._pending is not None:
                state, self._pending = self._pending, None
                self.load_state_dict(state)
        return self.value

    def update(self, grad: torch.Tensor) -> None:
        """One Adam step of the vector on the gradient ``grad``."""
        assert self.value is not None and self.optimizer is not None
        self.value.grad = grad
        self.optimizer.step()

    def state_dict(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A snapshot (deep copy): the vector, Adam's state, then ``extra``; ``{}`` before the first step."""
        if self.value is None:
            return {}
        assert self.optimizer is not None
        return copy.deepcopy({self.key: self.value.detach(), "optimizer": self.optimizer.state_dict(), **(extra or {})})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.value is None:  # the vector lives on the training device: restore at the first step
            self._pending = state
            return
        assert self.optimizer is not None
        with torch.no_grad():
            self.value.copy_(state[self.key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.on_load is not None:
            self.on_load(state)

"""Composition: a loss-weighting combiner feeding a gradient-combining one."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from mtbench.combiners.base import Combiner, Step
from mtbench.errors import MtbenchError


class Reweighted(Combiner):
    """``combine`` applied to the losses re-weighted by ``weighting``.

    ``weighting`` is a combiner with ``task_weights(step) -> [T]`` (GradNorm); each step
    its weights w multiply the losses, and ``combine`` (GradDrop, PCGrad, MGDA, ...) turns
    the weighted losses w_i L_i into gradients. Options: one mapping per piece, named by
    the pieces' config names, holding that piece's own options.
    """

    ddp = "what its two pieces communicate"
    weighting_cls: ClassVar[type[Combiner]]
    combine_cls: ClassVar[type[Combiner]]

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.weighting = self._piece(self.weighting_cls, num_tasks)
        self.combine = self._piece(self.combine_cls, num_tasks)
        self.needs_input_grad = self.weighting.needs_input_grad or self.combine.needs_input_grad

    def _piece(self, cls: type[Combiner], num_tasks: int) -> Combiner:
        opts = dict(self.opts.get(cls.name) or {})
        if opts.get("name") == cls.name:  # the piece's own config file, composed in (its name key)
            del opts["name"]
        try:
            return cls(num_tasks, **opts)
        except MtbenchError as e:
            raise MtbenchError(str(e).replace("combiner.", f"combiner.{cls.name}.", 1)) from None

    def representation_use(self) -> str | None:
        for piece in (self.weighting, self.combine):
            fix = piece.representation_use()
            if fix is not None:
                return fix.replace("combiner.", f"combiner.{piece.name}.", 1)
        return None

    def prepare(self, model) -> None:
        self.weighting.prepare(model)
        self.combine.prepare(model)

    def ddp_refusal(self) -> str | None:
        for piece in (self.weighting, self.combine):
            why = piece.ddp_refusal()
            if why:
                return why
        return None

    def backward(self, step: Step) -> None:
        w = self.weighting.task_weights(step)  # type: ignore[attr-defined]
        self.combine.backward(dataclasses.replace(step, losses=step.losses * w))

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict(), "combine": self.combine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.weighting.load_state_dict(state.get("weighting", {}))
            self.combine.load_state_dict(state.get("combine", {}))

    def log_values(self) -> dict[str, float]:
        return {**self.weighting.log_values(), **self.combine.log_values()}

    # the per-epoch diagnostics: the weighting's weights, the combining piece's Gram matrix (of
    # the re-weighted losses' gradients, what it combines) and values
    @property
    def diagnostics(self) -> bool:  # type: ignore[override]
        return bool(self.combine.diagnostics)

    @diagnostics.setter
    def diagnostics(self, on: bool) -> None:
        self.weighting.diagnostics = self.combine.diagnostics = bool(on)

    @property
    def diagnostics_gram(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.combine.diagnostics_gram

    @diagnostics_gram.setter
    def diagnostics_gram(self, gram: torch.Tensor | None) -> None:
        self.combine.diagnostics_gram = gram

    @property
    def last_weights(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.weighting.last_weights

    def computes_gram(self) -> bool:
        return self.combine.computes_gram()

    def diagnostic_values(self) -> dict[str, torch.Tensor]:
        return {**self.weighting.diagnostic_values(), **self.combine.diagnostic_values()}

"""One training step: forward (model and per-task losses, under ``trainer.amp``'s autocast) ->
``combiner.backward`` -> optimizer step. Shared by the trainer and ``scripts/bench_step.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mtbench.combiners import Step
from mtbench.train.device import autocast

__all__ = ["TrainStep"]


class TrainStep:
    """``step(x, labels)`` runs one training step of ``model`` on a prepared batch and returns
    the per-task losses [T] (not detached).

    ``losses(outputs, labels)`` gives the per-task losses (``Task.losses``); ``amp``: the
    autocast dtype of the forward pass (``train.device.amp_dtype``) or None; ``generator`` /
    ``cpu_generator``: the combiner's random numbers on the training device and on the host;
    ``column_losses``: loss i reads output column i only (``Task.column_losses``).
    A combiner that needs the input's gradient (``needs_input_grad``) needs ``x`` to require
    it: the caller sets that, outside whatever it times.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        combiner: Any,
        optimizer: torch.optim.Optimizer,
        losses: Callable[[Any, Any], torch.Tensor],
        device: torch.device,
        amp: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        cpu_generator: torch.Generator | None = None,
        column_losses: bool = False,
        group: Any = None,
    ):
        self.model, self.combiner, self.optimizer, self.losses = model, combiner, optimizer, losses
        self.device, self.amp = device, amp
        self.generator, self.cpu_generator = generator, cpu_generator
        self.column_losses = bool(column_losses)
        #: ``trainer.diagnostics=true``: a :class:`mtbench.train.diagnostics.Diagnostics` called
        #: around the combiner's backward pass (None: off)
        self.diagnostics: Any = None
        #: ``trainer.strategy=ddp``: the process group (``Step.group``); None in one process
        self.group = group

    @property
    def needs_input_grad(self) -> bool:
        return bool(self.combiner.needs_input_grad)

    @property
    def needs_second_batch(self) -> bool:
        return bool(getattr(self.combiner, "needs_second_batch", False))

    def __call__(
        self, x: torch.Tensor, labels: Any, second: tuple | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``second``: a second, independent prepared batch ``(x2, labels2)`` for a combiner that
        ``needs_second_batch`` (its forward runs here, inside the step; under DDP a third item,
        its losses' ``scale``); the returned losses are the first batch's. ``scale`` (DDP):
        per-task factors [T] of this rank's losses, so that their mean over the ranks is the
        global batch's loss (``World.loss_scale``)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            rep, outputs = self.model(x)
            losses = self.losses(outputs, labels)
            if scale is not None:
                losses = losses * scale.to(losses.dtype)
            if second is not None:
                rep2, outputs2 = self.model(second[0])
                losses2 = self.losses(outputs2, second[1])
                if len(second) > 2 and second[2] is not None:
                    losses2 = losses2 * second[2].to(losses2.dtype)
        step = Step(
            self.model,
            x,
            rep,
            outputs,
            losses,
            self.generator,
            self.cpu_generator,
            self.column_losses,
            group=self.group,
        )
        if second is not None:
            step.inputs2, step.rep2, step.outputs2, step.losses2 = second[0], rep2, outputs2, losses2
        if self.diagnostics is not None:
            self.diagnostics.before(step)
        self.combiner.backward(step)
        if self.diagnostics is not None:
            self.diagnostics.after(step)
        self.optimizer.step()
        return losses

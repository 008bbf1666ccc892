"""Where a run stands: :class:`RunState`, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

__all__ = ["RunState"]


@dataclass
class RunState:
    """The position and the running totals of a run (what a checkpoint needs besides the model,
    optimizer, scheduler, combiner and generator states). Stored in checkpoints as a plain dict
    with these keys (:meth:`to_dict`, :meth:`from_dict`)."""

    #: the epoch in progress (1-based)
    epoch: int = 1
    #: steps of that epoch already done
    step: int = 0
    #: the batch-order generator's state at the start of the epoch, to replay its order
    epoch_start_data_rng: torch.Tensor | None = None
    #: the epoch's sum of the per-task losses so far (read at the logging interval)
    loss_sum: float = 0.0
    #: the epoch's training-step time so far, seconds
    epoch_step_s: float = 0.0
    #: every step's duration, seconds
    step_times: list[float] = field(default_factory=list)
    #: every step's process CPU time, seconds (CPU device only; none in checkpoints of older runs)
    step_cpu_times: list[float] = field(default_factory=list)
    #: the machine's 1-minute load average, sampled at the start and end of every epoch
    load_1m: list[float] = field(default_factory=list)
    #: training examples seen
    examples: int = 0
    #: one row per finished epoch (``history.csv``)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the epoch with the best validation score so far: ``{"epoch", "val"}``
    best: dict[str, Any] | None = None
    #: that epoch's model state (on the host)
    best_model: dict[str, torch.Tensor] | None = None
    #: ``trainer.report=last_k``: ``{"epoch", "val", "test"}`` of each of the last k epochs so far
    reported: list[dict[str, Any]] = field(default_factory=list)
    #: ``trainer.diagnostics``: the epoch's running sums so far (``Diagnostics.state_dict``)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)

    def add_step_times(self, times: list[float]) -> None:
        for dt in times:
            self.step_times.append(dt)
            self.epoch_step_s += dt

    def next_epoch(self, data_rng: torch.Tensor) -> None:
        """Move to the start of the next epoch, whose batch order starts at ``data_rng``."""
        self.epoch, self.step, self.epoch_start_data_rng = self.epoch + 1, 0, data_rng
        self.loss_sum, self.epoch_step_s = 0.0, 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

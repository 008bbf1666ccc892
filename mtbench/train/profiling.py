"""``debug=profile`` (``trainer.profile_steps``): ``torch.profiler`` over the first training steps,
its trace and operator table written into the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

__all__ = ["Profile"]

log = logging.getLogger("mtbench")


class Profile:
    """``torch.profiler`` over the first ``steps`` training steps of the run (after one warm-up
    step); writes ``profile/trace.json`` (a Chrome / Perfetto trace) and ``profile/ops.txt`` (the
    operators by total time) into the run folder."""

    def __init__(self, run_dir: Path | None, steps: int, device: torch.device):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.folder = Path(run_dir) / "profile" if run_dir is not None else None
        self.steps, self.done = int(steps), False
        self.prof = profile(activities=activities, record_shapes=True)
        self.started = None

    def step(self, i: int) -> None:
        """Called before step ``i`` (0-based) of the first epoch."""
        if self.done:
            return
        self.last = i
        if i == 1 and self.started is None:  # step 0 is a warm-up
            self.prof.__enter__()
            self.started = i
        elif self.started is not None and i - self.started >= self.steps:
            self.close(i - self.started)

    def close(self, count: int | None = None) -> None:
        """Stop (after ``count`` profiled steps; None: at the end of the epoch) and write the files."""
        if self.done or self.started is None:
            self.done = True
            return
        self.done = True
        count = count if count is not None else self.last + 1 - self.started
        self.prof.__exit__(None, None, None)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.prof.export_chrome_trace(str(self.folder / "trace.json"))
            sort = (
                "cuda_time_total"
                if any(e.device_type.name == "CUDA" for e in self.prof.key_averages())
                else "cpu_time_total"
            )
            (self.folder / "ops.txt").write_text(
                self.prof.key_averages().table(sort_by=sort, row_limit=40) + "\n", encoding="utf-8"
            )
            log.info(f"mtbench: profile of {count} training step(s) written to {self.folder}")

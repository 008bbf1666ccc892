"""Hydra callback: rebuild and print the comparison tables (and draw the plots) when a run or a
sweep ends.

The tables are built from the files on disk (``results/<name>/runs/<combiner>/<variant>/seed=<seed>/metrics.json``),
not from the jobs' return values, so this works the same with every launcher: the basic one (jobs
in this process), ``joblib`` (worker processes) and ``submitit_local`` / ``submitit_slurm``
(other processes or machines; ``on_multirun_end`` runs in the submitting process once every
job has returned). A sweep whose jobs write into several folders (``-m name=a,b``) gets the
tables of each: the folders are read from the command's manifest (``sweep.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtbench.report import sweep
from mtbench.report.table import NoRuns, report


class TableCallback(Callback):
    def __init__(self, plots: bool = True, paper: str | None = None, speed: bool = True) -> None:
        """``plots``: draw the plots too; ``paper``: a CSV of the paper's numbers to show beside
        ours (default: ``<results_dir>/paper/<task>.csv`` when it exists); ``speed``: at the end of
        a sweep, measure the speed column (``mtbench.report.speed``; false: the runs' own times)."""
        self.plots = bool(plots)
        self.paper = paper
        self.speed = bool(speed)

    def _tables(self, folder: Path, config: DictConfig | None = None) -> None:
        try:
            report(folder, plots=self.plots, paper=self.paper)
            if config is not None and config.get("logger") is not None:
                from mtbench.report.loggers import log_table  # the table to the logger= backends too

                log_table(config.logger, folder, Path(str(config.results_dir)))
        except NoRuns as e:
            if any(job.get("outcome") == "skipped" for job in sweep.jobs()):
                print(
                    f"mtbench: {folder}: no finished runs yet; the process that owns them writes the tables",
                    file=sys.stderr,
                )
            else:
                print(f"mtbench: {e}", file=sys.stderr)
        except (OSError, ValueError) as e:
            print(f"mtbench: could not write the tables in {folder}: {e}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("MTBENCH_DRY_RUN") == "1":  # mtbench -m ... --dry-run: no job ran
            return
        if _follower(config):
            return
        folders = sweep.folders() or [Path(config.hydra.sweep.dir)]
        for folder in folders:
            self._measure_speed(folder)
            self._tables(folder, config)

    def _measure_speed(self, folder: Path) -> None:
        """The speed column's measurement (``mtbench.report.speed``): every swept combiner's step
        timed interleaved with the baseline's, in this process, once the sweep's runs are done."""
        if not self.speed:
            return
        from mtbench.report import speed

        try:
            result = speed.measure(folder)
        except Exception as e:  # noqa: BLE001 - the tables still come, with the runs' own timings
            print(
                f"mtbench: the speed measurement of {folder} failed ({type(e).__name__}: {e}); the table uses the runs' own step times",
                file=sys.stderr,
            )
            (folder / speed.SPEED_FILE).unlink(missing_ok=True)
            return
        if result is not None:
            print(
                f"mtbench: speed measured in {result['seconds']:.0f} s ({len(result['rows'])} rows, interleaved) -> {folder / speed.SPEED_FILE}",
                file=sys.stderr,
            )

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _follower(config):
            return
        self._tables(Path(config.results_dir) / config.name, config)


def _follower(config: DictConfig) -> bool:
    """A rank other than 0 of a ``trainer.strategy=ddp`` run that torchrun or SLURM started:
    rank 0 writes the tables."""
    trainer = config.get("trainer")
    if trainer is None or str(trainer.get("strategy", "single")) != "ddp":
        return False
    from mtbench.train.distributed import external_rank

    return bool(external_rank())

"""Hydra callback: rebuild and print the comparison table when a run or a sweep ends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtbench.report.table import NoRuns, report


class TableCallback(Callback):
    def _tables(self, folder: Path) -> None:
        try:
            report(folder)
        except NoRuns as e:
            print(f"mtbench: {e}", file=sys.stderr)
        except OSError as e:
            print(f"mtbench: could not write the tables in {folder}: {e}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._tables(Path(config.hydra.sweep.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._tables(Path(config.results_dir) / config.name)

"""Shared helpers: run the real `mtbench` / `mtbench-table` commands in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: a config small enough that one run takes a few seconds on 2 CPU cores
TINY = [
    "task.n_train=192",
    "task.n_val=96",
    "task.n_test=96",
    "model.width=8",
    "model.rep_dim=32",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.device=cpu",
    "trainer.num_threads=1",
]


def command(name: str) -> list[str]:
    """The installed console script (next to this interpreter), else ``python -m``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"mtbench": "mtbench", "mtbench-table": "mtbench.report.table"}[name]
    return [sys.executable, "-m", module]


def run_cli(name: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        command(name) + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_dir(results: Path, combiner: str, seed: int = 0, variant: str = "default") -> Path:
    """The folder of one run: ``<results>/runs/<combiner>/<variant>/seed=<seed>``
    (``results`` is the sweep's folder, e.g. ``tmp_path / "results" / "shapes40"``)."""
    new = Path(results) / "runs" / combiner / variant / f"seed={seed}"
    old = Path(results) / "runs" / combiner / f"seed={seed}"
    return new if new.exists() or not old.exists() else old

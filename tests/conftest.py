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
    module = {
        "mtbench": "mtbench",
        "mtbench-table": "mtbench.report.table",
        "mtbench-fake": "mtbench.data.fake",
        "mtbench-eval": "mtbench.train.evaluate",
    }[name]
    return [sys.executable, "-m", module]


def run_cli(
    name: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        command(name) + args,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_dir(results: Path, combiner: str, seed: int = 0, variant: str | None = None) -> Path:
    """The folder of one run: ``<results>/runs/<combiner>/<variant>/seed=<seed>`` (``results`` is
    the sweep's folder, e.g. ``tmp_path / "results" / "shapes40"``). Without ``variant``: the
    combiner's only variant holding that seed (an error if there are several)."""
    base = Path(results) / "runs" / combiner
    if variant is not None:
        return base / variant / f"seed={seed}"
    found = sorted(p for p in base.glob(f"*/seed={seed}") if p.is_dir())
    if len(found) > 1:
        raise AssertionError(f"several variants of {combiner} seed={seed}: {[p.parent.name for p in found]}")
    return found[0] if found else base / "default" / f"seed={seed}"


def variant_of(overrides: list[str], combiner: str = "baseline") -> str:
    """The variant folder name a command line's overrides give ``combiner``'s runs."""
    from mtbench.variant import identity, variant_name

    return variant_name(identity(overrides, combiner))


def run_path(overrides: list[str], combiner: str = "baseline", seed: int = 0, name: str = "shapes40") -> str:
    """``results/<name>/runs/<combiner>/<variant>/seed=<seed>`` of a command line, relative to its folder."""
    return f"results/{name}/runs/{combiner}/{variant_of(overrides, combiner)}/seed={seed}"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run the tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run with ``--runslow`` or when ``-m`` names them; plain ``pytest`` skips them."""
    if config.getoption("--runslow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: pytest --runslow (or -m slow) runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

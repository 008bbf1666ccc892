"""The package ships its configs: a plain (non-editable) install works from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "mtbench." + ".".join(p.parent.relative_to(ROOT / "mtbench").parts)
        for p in (ROOT / "mtbench").rglob("__init__.py")
    }
    found = {f.rstrip(".") for f in found} | {"mtbench.configs"}
    # mtbench's Hydra sweeper: Hydra loads plugins from its hydra_plugins namespace only
    found |= {"hydra_plugins." + p.parent.name for p in (ROOT / "hydra_plugins").glob("*/__init__.py")}
    assert found == listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """mtbench's wheel (built from this tree) and a plain, non-editable install of it."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (wheel,) = wheel_dir.glob("mtbench-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=600,
    )
    return wheel, site


def test_wheel_installs_and_finds_its_configs(installed, tmp_path):
    wheel, site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and {f"mtbench/configs/{c}" for c in configs} <= names
    assert "mtbench/report/paper/celeba.csv" in names  # the paper's numbers, package data
    assert "hydra_plugins/mtbench_sweeper/__init__.py" in names  # the sweeper, found by Hydra's plugin scan
    assert "hydra_plugins/__init__.py" not in names  # a namespace shared with Hydra's other plugins
    entry_points = next(zipfile.Path(wheel, n).read_text() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mtbench-fake = mtbench.data.fake:main" in entry_points
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import mtbench, sys; print(mtbench.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(site))
    proc = subprocess.run(
        [sys.executable, "-m", "mtbench", "--cfg", "job", "combiner=graddrop"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: graddrop" in proc.stdout and "name: shapes40" in proc.stdout

    # the fake-data writers are a command of the installed package
    for dataset, expected in (("celeba", "list_attr_celeba.txt"), ("cifar100", "cifar-100-python/meta")):
        fake = subprocess.run(
            [sys.executable, "-m", "mtbench.data.fake", dataset, "--root", str(elsewhere / dataset), "--n", "3"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert fake.returncode == 0, fake.stderr
        assert (elsewhere / dataset / expected).is_file()
    # the tables find the paper's numbers inside the installed package
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mtbench.report.table import find_paper; print(find_paper('results/celeba', 'celeba'))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(site / "mtbench" / "report" / "paper" / "celeba.csv")


MINE = """
from mtbench.combiners.base import Combiner


class Mine(Combiner):
    name = "mine"
    defaults = {"scale": 1.0}

    def backward(self, step):
        (self.scale * step.losses.sum()).backward()
"""


def test_your_own_combiner_from_your_own_folder(installed, tmp_path):
    """A user folder with mine.py and combiner/mine.yaml, the installed (non-editable) package,
    the console script's import path (the working folder is not on it: ``python -P``)."""
    _, site = installed
    folder = tmp_path / "mine"
    (folder / "combiner").mkdir(parents=True)
    (folder / "mine.py").write_text(MINE)
    (folder / "combiner" / "mine.yaml").write_text("name: mine\n_target_: mine.Mine\nscale: 1.0\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = ["-m", "--config-dir", ".", "combiner=baseline,mine", "combiner.scale=2", *TINY]
    runner = "import sys; from mtbench.cli import main; sys.argv = ['mtbench', *sys.argv[1:]]; main()"
    proc = subprocess.run(
        [sys.executable, "-P", "-c", runner, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted((folder / "results" / "shapes40" / "runs").glob("*/*/seed=0/metrics.json"))
    metrics = [json.loads(p.read_text()) for p in found]
    assert sorted(m["combiner"] for m in metrics) == ["baseline", "mine"] and all(
        m["status"] == "completed" for m in metrics
    )
    mine = next(m for m in metrics if m["combiner"] == "mine")
    assert mine["config"]["combiner"]["scale"] == 2 and mine["config"]["combiner"]["_target_"] == "mine.Mine"
    assert "| mine (scale=2) |" in (folder / "results" / "shapes40" / "table.md").read_text()

"""Experiment presets and Hydra launchers: composition in-process, and one real sweep through
``hydra/launcher=submitit_local`` (jobs in other processes), tables and plots included."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, run_cli, run_dir
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from mtbench.combiners import PAPER

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def sweep_values(cfg, key: str) -> list[str]:
    return [v.strip() for v in str(cfg.hydra.sweeper.params[key]).split(",")]


@pytest.mark.parametrize(
    "preset, task",
    [("shapes40_compare", "shapes40"), ("paper_celeba", "celeba"), ("paper_cifar100", "cifar100_transfer")],
)
def test_preset_sweeps_the_papers_combiners_over_three_seeds(preset, task):
    if not (CONFIGS / "task" / f"{task}.yaml").exists():
        pytest.skip(f"configs/task/{task}.yaml does not exist yet")
    cfg = composed(f"experiment={preset}")
    assert cfg.name == preset and cfg.task.name == task
    assert sweep_values(cfg, "combiner") == list(PAPER)
    assert sweep_values(cfg, "seed") == ["0", "1", "2"]
    # the runs land in results/<preset>/runs/<combiner>/<variant>/seed=<seed>/
    assert cfg.hydra.sweep.dir == f"results/{preset}"


def test_shapes40_compare_keeps_the_default_setup_but_the_epochs():
    """The preset is the default setup (`mtbench -m`'s) trained near convergence: only the
    number of epochs differs (32, the learning curve's choice)."""
    preset, default = composed("experiment=shapes40_compare"), composed()
    for group in ("task", "model"):
        assert preset[group] == default[group], group
    assert preset.trainer.epochs == 32 and default.trainer.epochs == 4
    preset.trainer.epochs = default.trainer.epochs
    assert preset.trainer == default.trainer


def test_joblib_launcher_takes_n_jobs_from_the_config():
    cfg = composed("hydra/launcher=joblib", "hydra.launcher.n_jobs=3")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


def test_slurm_launcher_defaults_and_overrides():
    cfg = composed(
        "experiment=shapes40_compare",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.mem_gb=64",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.mem_gb, launcher.gpus_per_node, launcher.cpus_per_task) == ("gpu", 64, 1, 8)
    assert launcher.timeout_min > 0 and launcher.max_num_timeout > 0  # time limits requeue too
    # the plugin's own config stays reachable under its own name
    bare = composed("hydra/launcher=submitit_slurm", "hydra.launcher.partition=dev")
    assert bare.hydra.launcher.partition == "dev" and bare.hydra.launcher.max_num_timeout == 0


def test_submitit_local_sweep_end_to_end(tmp_path):
    """2 combiners x 2 seeds of the shapes40 preset on tiny data, each run a submitit job."""
    args = [
        "-m",
        "experiment=shapes40_compare",
        "hydra/launcher=submitit_local",
        "combiner=baseline,graddrop",
        "seed=0,1",
        *TINY,
    ]
    proc = run_cli("mtbench", args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = tmp_path / "results" / "shapes40_compare"
    for name in ("baseline", "graddrop"):
        for seed in (0, 1):
            m = json.loads((run_dir(folder, name, seed) / "metrics.json").read_text())
            assert m["status"] == "completed" and (m["combiner"], m["seed"]) == (name, seed)
            assert m["config"]["name"] == "shapes40_compare"
    assert list((folder / ".submitit").glob("*/*_log.out")), "the runs did not go through submitit"
    csv = pd.read_csv(folder / "table.csv").set_index("combiner")
    assert list(csv.index) == ["baseline", "graddrop"] and (csv["seeds"] == 2).all()
    assert 0 <= csv.loc["graddrop", "p_vs_baseline"] <= 1
    md = (folder / "table.md").read_text()
    assert md.strip() in proc.stdout and sum(line.startswith("|") for line in md.splitlines()) == 4
    assert (folder / "table.tex").read_text().splitlines()[1].startswith(r"\begin{tabular}")
    assert len(pd.read_csv(folder / "per_attribute.csv")) == 40
    for stem in ("error_vs_speed", "val_curves"):
        for ext in ("png", "pdf"):
            assert (folder / f"{stem}.{ext}").stat().st_size > 1000

"""Sweeps over any option: run identity (variants), tables over variants, the tuned table,
combiner options in a sweep of several combiners, exit status from the runs on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, run_cli

from mtbench.variant import identity, variant_name

SMALL = [o for o in TINY if not o.startswith("trainer.epochs")] + ["trainer.epochs=1", "trainer.progress=false"]


def test_variant_names():
    assert (
        variant_name(identity(["combiner=graddrop", "seed=3", "name=x", "trainer.progress=false"], "graddrop"))
        == "default"
    )
    assert (
        variant_name(identity(["trainer.lr=1e-3", "combiner.leak=0.5"], "graddrop"))
        == "combiner.leak=0.5,trainer.lr=0.001"
    )
    # an option the combiner does not have is not part of its identity
    assert variant_name(identity(["++combiner.leak=0.5", "trainer.lr=0.001"], "baseline")) == "trainer.lr=0.001"
    for key in ("results_dir=/x", "force=true", "data.root=/d", "data.cache_dir=/c", "data.workers=4", "trainer.num_threads=2",
                "trainer.eval_batch_size=64", "hydra/launcher=joblib", "experiment=paper_celeba", "task=celeba"):  # fmt: skip
        assert variant_name(identity([key], "baseline")) == "default", key
    long = variant_name(identity([f"task.k{i}={i}" for i in range(40)], "baseline"))
    assert (
        len(long) <= 100
        and long.startswith("task.k0=0,task.k1=1,")
        and long != variant_name(identity(["task.k0=1"], "baseline"))
    )
    assert "/" not in variant_name(identity(["task.name=a/b"], "baseline"))


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/*/seed=*/metrics.json"))]


def test_sweep_over_a_combiner_option_and_a_trainer_option(tmp_path):
    args = ["-m", "combiner=baseline,graddrop", "combiner.leak=0,0.5", "trainer.lr=0.001,0.003", *SMALL]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("combiner.leak does not apply to combiner=baseline") == 1
    folder = tmp_path / "results" / "shapes40"
    runs = _metrics(folder)
    assert all(m["status"] == "completed" for m in runs)
    got = sorted((m["combiner"], m["overrides"].get("combiner.leak"), m["overrides"]["trainer.lr"]) for m in runs)
    assert got == [("baseline", None, "0.001"), ("baseline", None, "0.003"),
                   ("graddrop", "0", "0.001"), ("graddrop", "0", "0.003"), ("graddrop", "0.5", "0.001"), ("graddrop", "0.5", "0.003")]  # fmt: skip
    for m in runs:
        assert "combiner" not in m["overrides"] and "seed" not in m["overrides"]
        assert ("leak" in m["config"]["combiner"]) == (m["combiner"] == "graddrop")
    table = pd.read_csv(folder / "table.csv")
    assert len(table) == 6 and {"combiner", "variant", "combiner.leak", "trainer.lr"} <= set(table.columns)
    # each graddrop row is compared with the baseline of its own learning rate
    for _, row in table[table["combiner"] == "graddrop"].iterrows():
        ref = table[(table["combiner"] == "baseline") & (table["variant"] == row["reference"])]
        assert len(ref) == 1 and ref["trainer.lr"].iloc[0] == row["trainer.lr"]
    md = (folder / "table.md").read_text()
    assert "| graddrop (leak=0, trainer.lr=0.001) |" in md and "compared with" in md
    assert (folder / "table_tuned.md").is_file()  # several variants per combiner
    # the same command again skips every run
    again = run_cli("mtbench", args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already completed") == 8  # baseline's two leak jobs share one folder per lr
    assert _metrics(folder) == runs


def test_tuned_table_selects_on_validation_not_test(tmp_path):
    """Built so that validation and test disagree: the variant best on validation is worst on test."""
    folder = tmp_path / "results" / "tune"
    spec = {  # variant lr -> (val error, test error)
        "0.001": (10.0, 30.0),
        "0.003": (20.0, 5.0),
    }
    for combiner in ("baseline", "graddrop"):
        for lr, (val, test) in spec.items():
            for seed in (0, 1):
                run = folder / "runs" / combiner / f"trainer.lr={lr}" / f"seed={seed}"
                run.mkdir(parents=True)
                cols = [["error_rate", "error rate (%)", False], ["max_f1", "max F1", True]]
                m = {"task": "shapes40", "combiner": combiner, "variant": f"trainer.lr={lr}", "overrides": {"trainer.lr": lr},
                     "seed": seed, "status": "completed", "metric_columns": cols, "select_metric": "error_rate",
                     "val": {"error_rate": val + seed, "max_f1": 50.0}, "test": {"error_rate": test + seed, "max_f1": 50.0},
                     "train_step_s": 0.01, "started_at": f"2026-01-01T00:00:0{lr[-1]}"}  # fmt: skip
                (run / "metrics.json").write_text(json.dumps(m))
    proc = run_cli("mtbench-table", ["--no-plots", "--select", "val", str(folder)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tuned = pd.read_csv(folder / "table_tuned.csv").set_index("combiner")
    assert list(tuned.index) == ["baseline", "graddrop"]
    assert (tuned["variant"] == "trainer.lr=0.001").all() and (tuned["variants_tried"] == 2).all()
    assert tuned.loc["graddrop", "test_error_rate_mean"] == pytest.approx(30.5)
    assert "Tuned on validation" in proc.stdout and "trainer.lr=0.001" in (folder / "table_tuned.md").read_text()


def test_a_combiner_option_no_swept_combiner_has_is_refused(tmp_path):
    proc = run_cli("mtbench", ["-m", "combiner=baseline,clip", "combiner.leak=0.5", *SMALL], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "combiner.leak is not an option of any of the combiners swept (baseline, clip)" in proc.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("**/metrics.json"))


@pytest.mark.parametrize(
    "override, words",
    [
        ("combiner=gradrop", "did you mean combiner=graddrop?"),
        ("experiment=paper_celeb", "did you mean experiment=paper_celeba?"),
        ("trainer.epocs=2", "did you mean trainer.epochs?"),
        ("+trainer.epocs=2", "no part of mtbench reads trainer.epocs"),
        ("combiner.lek=0.5", "combiner.lek is not an option of combiner=baseline"),
    ],
)
def test_typos_get_one_line_with_the_closest_name(tmp_path, override, words):
    proc = run_cli("mtbench", [override, *SMALL], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mtbench: error:") and words in line, line


def test_a_bad_value_for_one_job_refuses_the_sweep_before_any_job_runs(tmp_path):
    proc = run_cli("mtbench", ["-m", "combiner=graddrop", "combiner.leak=0.5,7", *SMALL], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "job combiner.leak=7: combiner.leak" in proc.stderr and "1 of 2 job(s) refused; nothing ran" in proc.stderr
    assert _metrics(tmp_path / "results" / "shapes40") == []  # the good job did not run either


def test_failed_run_under_joblib_gives_a_nonzero_exit(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(fixtures), os.environ.get("PYTHONPATH", "")])}
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "combiner=baseline,nan_head",
            f"hydra.searchpath=[file://{fixtures / 'configs'}]", *SMALL]  # fmt: skip
    proc = run_cli("mtbench", args, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "nan_head" in proc.stderr and "failed" in proc.stderr
    statuses = {m["combiner"]: m["status"] for m in _metrics(tmp_path / "results" / "shapes40")}
    assert statuses == {"baseline": "completed", "nan_head": "failed"}


def test_a_sweep_over_name_writes_each_folders_table(tmp_path):
    proc = run_cli("mtbench", ["-m", "name=a,b", *SMALL], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("a", "b"):
        assert (tmp_path / "results" / name / "table.md").is_file(), name


def test_mtbench_table_on_a_folder_where_every_run_failed(tmp_path):
    run = tmp_path / "r" / "runs" / "baseline" / "default" / "seed=0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps({"combiner": "baseline", "seed": 0, "status": "failed", "reason": "non-finite loss"})
    )
    proc = run_cli("mtbench-table", [str(tmp_path / "r")], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no completed run" in proc.stderr
    assert "| baseline | default | 0 | failed | non-finite loss |" in (tmp_path / "r" / "table.md").read_text()


def test_tuned_and_compare_presets_share_the_budget_and_sweep_a_learning_rate_grid():
    from hydra import compose, initialize_config_module

    import mtbench.combiners  # noqa: F401 - registers ${mtbench_combiners:...}, the sweep list

    with initialize_config_module(config_module="mtbench.configs", version_base=None):
        tuned = compose("config", ["experiment=shapes40_tuned"], return_hydra_config=True)
        compare = compose("config", ["experiment=shapes40_compare"], return_hydra_config=True)
    assert tuned.name == "shapes40_tuned" and compare.name == "shapes40_compare"
    assert tuned.trainer.epochs == compare.trainer.epochs == 32  # the learning curve's choice
    params = tuned.hydra.sweeper.params
    assert params["seed"] == "0,1,2" and params["trainer.lr"] == "0.001,0.003,0.01"
    assert params["combiner"] == compare.hydra.sweeper.params["combiner"]  # every combiner


def test_tuned_preset_writes_the_tuned_table(tmp_path):
    args = ["-m", "experiment=shapes40_tuned", "combiner=baseline,graddrop", "seed=0", *SMALL]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned = pd.read_csv(tmp_path / "results" / "shapes40_tuned" / "table_tuned.csv")
    assert list(tuned["combiner"]) == ["baseline", "graddrop"] and set(tuned["variants_tried"]) == {3}
    assert all("trainer.lr=" in s for s in tuned["settings"])

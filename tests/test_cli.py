"""End to end: the real `mtbench -m` sweep and `mtbench-table`, in subprocesses, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import cli_case, run_cli, run_dir, run_path

from mtbench.combiners import COMBINERS, PAPER

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sweep_combiners(overrides: list[str] | None = None) -> list[str]:
    """The combiners `mtbench -m` sweeps: the composed primary config's sweeper params (under
    ``overrides``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides or [], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return [c.strip() for c in str(cfg.hydra.sweeper.params.combiner).split(",")]


def test_sweep_lists_the_papers_combiners_and_each_has_a_config():
    assert sweep_combiners() == list(PAPER) == list(COMBINERS)[: len(PAPER)]
    assert sweep_combiners(["experiment=zoo"]) == list(COMBINERS)  # every registered one
    for name in COMBINERS:
        assert yaml.safe_load((CONFIGS / "combiner" / f"{name}.yaml").read_text())["name"] == name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`mtbench -m seed=0,1` over the paper's combiners, once for the module."""
    from conftest import TINY

    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("mtbench", ["-m", "seed=0,1", *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd, proc


def test_sweep_writes_every_run(sweep):
    cwd, _ = sweep
    assert not (cwd / "outputs").exists() and not (cwd / "multirun").exists()
    for name in PAPER:
        for seed in (0, 1):
            run = run_dir(cwd / "results" / "shapes40", name, seed)
            m = json.loads((run / "metrics.json").read_text())
            assert m["status"] == "completed", m.get("reason")
            assert (m["task"], m["combiner"], m["seed"], m["epochs"]) == ("shapes40", name, seed, 2)
            for split in ("test", "val"):
                assert 0 <= m[split]["error_rate"] <= 100 and 0 <= m[split]["max_f1"] <= 100
            assert m["train_step_s"] > 0 and m["examples_per_s"] > 0
            assert m["speed_clock"] == "cpu" and 0 < m["train_step_cpu_s"]
            assert m["load"]["cores"] >= 1 and len(m["load"]["load_1m"]) == 2 * m["epochs"]
            assert m["config"]["trainer"]["epochs"] == 2 and m["config"]["combiner"]["name"] == name
            history = pd.read_csv(run / "history.csv")
            assert list(history["epoch"]) == [1, 2]
            assert m["val"]["error_rate"] == pytest.approx(history["val_error_rate"][m["best_epoch"] - 1])
            attrs = pd.read_csv(run / "per_attribute.csv")
            assert len(attrs) == 40 and attrs["error"].mean() == pytest.approx(m["test"]["error_rate"])
            assert not list(run.glob(".*.tmp")), "temporary files left behind"


def test_sweep_seeds_differ_and_table_is_printed(sweep):
    cwd, proc = sweep
    a, b = (
        json.loads((run_dir(cwd / "results" / "shapes40", "baseline", s) / "metrics.json").read_text()) for s in (0, 1)
    )
    assert a["val"] != b["val"], "two seeds gave identical results"
    assert "| combiner | error rate (%) ↓ | max F1 ↑ | speed vs baseline | seeds |" in proc.stdout
    for name in PAPER:
        assert f"| {name} |" in proc.stdout


def test_table_files(sweep):
    cwd, _ = sweep
    folder = cwd / "results" / "shapes40"
    csv = pd.read_csv(folder / "table.csv")
    assert list(csv["combiner"]) == list(PAPER)
    assert (csv["seeds"] == 2).all()
    base = csv.set_index("combiner").loc["baseline"]
    assert base["speed_mean"] == pytest.approx(1.0, abs=0.5)
    # the table's means are the means of the runs' own numbers
    errs = [
        json.loads((run_dir(folder, "baseline", s) / "metrics.json").read_text())["test"]["error_rate"] for s in (0, 1)
    ]
    assert base["test_error_rate_mean"] == pytest.approx(sum(errs) / 2)
    md = (folder / "table.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(PAPER) and " ± " in md
    # the footnote: the speed column measured after the sweep, interleaved (mtbench/report/speed.py)
    assert "Speed: measured after the sweep" in md and "The baseline against itself:" in md
    assert "compared with" not in md  # one baseline variant: every row is compared with it
    base_cells = next(line for line in table_lines if line.startswith("| baseline |")).split(" | ")
    assert base_cells[3].strip("*† ") == "1.00" and base_cells[4] == "2"  # 1.00 by definition, no ±
    tex = (folder / "table.tex").read_text()
    assert tex.splitlines()[1].startswith(r"\begin{tabular}") and r"$\pm$" in tex and "baseline" in tex


def test_mtbench_table_rebuilds(sweep):
    cwd, _ = sweep
    folder = cwd / "results" / "shapes40"
    before = (folder / "table.md").read_text()
    (folder / "table.md").unlink()
    proc = run_cli("mtbench-table", [str(folder)], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "table.md").read_text() == before
    assert before.strip() in proc.stdout


cli_case(__name__, "table empty", "mtbench-table", lambda f: [str(f / "empty")], setup=lambda f: (f / "empty").mkdir())
cli_case(__name__, "table missing", "mtbench-table", lambda f: [str(f / "missing")])


def test_mtbench_table_with_no_runs(cli_runs):
    proc = cli_runs[__name__, "table empty"]
    assert proc.returncode == 1
    assert "no finished runs" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_runs[__name__, "table missing"]
    assert proc.returncode == 1 and "is not a folder" in proc.stderr


def test_single_run_with_overrides(tmp_path, tiny):
    data = [o for o in tiny if not o.startswith("trainer.")]
    args = [
        "task=shapes40",
        "combiner=baseline",
        "seed=3",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.device=cpu",
    ]
    proc = run_cli("mtbench", args + data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / run_path(args + data, "baseline", 3) / "metrics.json").read_text())
    assert m["status"] == "completed" and m["epochs"] == 1 and m["config"]["trainer"]["batch_size"] == 32
    assert m["steps"] == 192 // 32


for _group in ("task", "combiner"):
    cli_case(__name__, f"{_group}=nope", "mtbench", [f"{_group}=nope"])


@pytest.mark.parametrize("group", ["task", "combiner"])
def test_unknown_name_lists_choices(cli_runs, group):
    proc = cli_runs[__name__, f"{group}=nope"]
    assert proc.returncode != 0
    assert f"Could not find '{group}/nope'" in proc.stderr
    assert f"Available options in '{group}'" in proc.stderr


def test_multirun_flag_anywhere_on_the_command_line(tmp_path, tiny):
    """`-m` after an override (`mtbench name=x -m ...`) starts the sweep like `mtbench -m name=x ...`."""
    args = ["name=late_flag", "-m", "combiner=baseline", "seed=0,1", *tiny, "trainer.epochs=1"]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unrecognized arguments" not in proc.stderr
    for seed in (0, 1):
        m = json.loads((run_dir(tmp_path / "results" / "late_flag", "baseline", seed) / "metrics.json").read_text())
        assert m["status"] == "completed" and m["seed"] == seed


cli_case(__name__, "--help", "mtbench", ["--help"])
cli_case(__name__, "--cfg job", "mtbench", ["--cfg", "job", "task.n_train=64"])
cli_case(__name__, "--cfg hydra", "mtbench", ["--cfg", "hydra"])


def test_help_is_mtbench_own(cli_runs):
    proc = cli_runs[__name__, "--help"]
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "is powered by Hydra" not in text and text.startswith("mtbench: a benchmark of gradient combiners")
    assert (
        "mtbench -m" in text
        and "mtbench-table results/<name>" in text
        and "mtbench-fake celeba" in text
        and "docs/" in text
        and "README" in text
    )
    assert "results/<name>/runs/<combiner>/<variant>/seed=<seed>/" in text
    # the config groups and their choices, as packaged
    for group in ("combiner", "task", "model", "experiment"):
        choices = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        assert f"{group}: {', '.join(choices)}" in text


def test_cfg_job_is_resolved(cli_runs):
    proc = cli_runs[__name__, "--cfg job"]
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["name"] == "shapes40" and cfg["task"]["n_train"] == 64 and "${" not in proc.stdout
    hydra_cfg = cli_runs[__name__, "--cfg hydra"]  # Hydra's part, as Hydra prints it
    assert hydra_cfg.returncode == 0 and "sweep:" in hydra_cfg.stdout, hydra_cfg.stderr


cli_case(__name__, "fake --n 0", "mtbench-fake", lambda f: ["celeba", "--root", str(f / "d"), "--n", "0"])
cli_case(__name__, "fake", "mtbench-fake", [])


def test_mtbench_fake_bad_input_is_one_line(cli_runs, tmp_path):
    for key, fix in (("fake --n 0", "give at least 1 image"), ("fake", "name the dataset")):
        proc = cli_runs[__name__, key]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mtbench-fake: error:") and fix in proc.stderr
    assert not (cli_runs[__name__, "fake --n 0"].cwd / "d").exists()
    proc = run_cli("mtbench-fake", ["cifar100", "--root", str(tmp_path / "c"), "--n", "8"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "c" / "cifar-100-python").iterdir()} == {"train", "test", "meta"}

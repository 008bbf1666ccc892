"""trainer.save_model: the kept weights (model.pt), and mtbench-eval re-evaluating them with the
numbers of metrics.json (on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, cli_case, run_cli, run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("saved")
    proc = run_cli("mtbench", ["combiner=graddrop", *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(cwd / "results" / "shapes40", "graddrop")
    return cwd, folder, json.loads((folder / "metrics.json").read_text())


def test_best_model_is_kept_and_the_checkpoint_removed(trained):
    _, folder, metrics = trained
    assert (folder / "model.pt").is_file() and not (folder / "checkpoint.pt").exists()
    saved = torch.load(folder / "model.pt", weights_only=False)  # a plain torch file
    assert saved["which"] == "best" and saved["epoch"] == metrics["best_epoch"]
    assert all(isinstance(v, torch.Tensor) for v in saved["state_dict"].values())


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_gives_the_numbers_of_metrics_json(trained, split):
    cwd, folder, metrics = trained
    proc = run_cli("mtbench-eval", [str(folder), "--split", split, "--json"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == metrics[split]  # identical, not approximately
    text = run_cli("mtbench-eval", [str(folder), "--split", split], cwd=cwd)
    assert text.returncode == 0 and f"{split} error rate (%) {metrics[split]['error_rate']:.4f}" in text.stdout


def test_last_and_none(tmp_path):
    proc = run_cli("mtbench", ["trainer.save_model=last", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "results" / "shapes40", "baseline")
    assert torch.load(folder / "model.pt", weights_only=False)["which"] == "last"
    assert torch.load(folder / "model.pt", weights_only=False)["epoch"] == 2
    other = tmp_path / "none"
    other.mkdir()
    proc = run_cli("mtbench", ["trainer.save_model=none", *TINY], cwd=other)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(other / "results" / "shapes40", "baseline")
    assert not (folder / "model.pt").exists() and (folder / "metrics.json").is_file()
    bad = run_cli("mtbench-eval", [str(folder)], cwd=other)
    assert bad.returncode == 2 and bad.stderr.startswith("mtbench: error:") and "trainer.save_model=best" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


cli_case(__name__, "save_model=first", "mtbench", ["trainer.save_model=first", *TINY])
cli_case(__name__, "eval nowhere", "mtbench-eval", lambda folder: [str(folder / "nowhere")])


def test_bad_inputs(cli_runs):
    proc = cli_runs[__name__, "save_model=first"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert (
        proc.returncode == 2
        and len(errors) == 1
        and "trainer.save_model" in errors[0]
        and "best, last, none" in errors[0]
    )
    bad = cli_runs[__name__, "eval nowhere"]
    assert bad.returncode == 2 and bad.stderr.startswith("mtbench: error:") and "is not a folder" in bad.stderr

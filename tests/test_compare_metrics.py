"""Metrics that compare across papers: mean / min accuracy and mean F1 at 0.5 (task.columns),
and the all-positive floor of max F1 (python -m mtbench.metrics f1-floor)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli_case, run_cli, run_dir

from mtbench.metrics import all_positive_f1, binary_attribute_metrics, f1_at_threshold, max_f1_scores

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_fake_celeba.py"


def test_hand_case():
    scores = torch.tensor([[0.9, 0.5, 0.2], [0.8, 0.4, 0.6], [0.3, 0.5, 0.1], [0.1, 0.7, 0.7]])
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    # Smiling: preds [1,1,0,0] = labels: acc 100, F1 1.  Male: preds [1,0,1,1] vs [1,0,0,1]: TP 2,
    # FP 1, FN 0: acc 75, F1 4/5.  Bald: no positives, preds [0,1,0,1]: acc 50, F1 0 (TP = 0).
    assert f1_at_threshold(scores, labels).tolist() == pytest.approx([1.0, 0.8, 0.0])
    out = binary_attribute_metrics(scores, labels)
    assert out["mean_acc"] == pytest.approx(75.0) and out["min_acc"] == pytest.approx(50.0)
    assert out["mean_f1"] == pytest.approx(60.0)
    assert out["mean_acc"] == pytest.approx(100 - out["error_rate"])
    assert set(out["per_attribute"][0]) == {"attribute", "base_rate", "error", "max_f1"}  # per_attribute.csv unchanged


def test_nothing_predicted_nothing_present_is_f1_zero():
    assert f1_at_threshold(torch.zeros(3, 1), torch.zeros(3, 1)).tolist() == [0.0]
    assert f1_at_threshold(torch.ones(3, 1), torch.ones(3, 1)).tolist() == [1.0]


def test_max_f1_is_at_least_the_all_positive_f1():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(500, 40, generator=g) < torch.linspace(0.02, 0.9, 40)
    scores = torch.rand(500, 40, generator=g)  # a useless model
    floor = all_positive_f1(labels.double().mean(0))
    assert bool((max_f1_scores(scores, labels) >= floor - 1e-12).all())
    assert float(all_positive_f1(torch.tensor([0.5]))) == pytest.approx(2 / 3)


def _fake_celeba(root: Path, n: int) -> Path:
    spec = importlib.util.spec_from_file_location("make_fake_celeba", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_fake_celeba(root, n, seed=1)
    return root / "list_attr_celeba.txt"


def test_f1_floor_command_on_the_fake_attribute_file(tmp_path):
    attr = _fake_celeba(tmp_path, 60)
    rows = [line.split() for line in attr.read_text().splitlines()[2:]]
    labels = np.array([[v == "1" for v in row[1:]] for row in rows], dtype=float)
    p = labels.mean(axis=0)
    expected = 100 * float(np.mean(2 * p / (1 + p)))
    proc = subprocess.run(
        [sys.executable, "-m", "mtbench.metrics", "f1-floor", str(attr), "--per-attribute"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("mean all-positive F1 over 40 attributes: ")
    assert float(last.split(": ")[1].split()[0]) == pytest.approx(expected, abs=0.006)
    assert len(proc.stdout.strip().splitlines()) == 41 and proc.stdout.startswith("5_o_Clock_Shadow")
    bad = subprocess.run(
        [sys.executable, "-m", "mtbench.metrics", "f1-floor", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("mtbench: error:") and len(bad.stderr.strip().splitlines()) == 1
    )


def test_columns_reach_metrics_json_and_the_table(tmp_path):
    proc = run_cli("mtbench", ["task.columns=[mean_acc,min_acc,mean_f1]", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir(tmp_path / "results" / "shapes40", "baseline") / "metrics.json").read_text())
    assert set(metrics["test"]) == {"mean_acc", "min_acc", "mean_f1"} and metrics["select_metric"] == "mean_acc"
    assert metrics["test"]["min_acc"] <= metrics["test"]["mean_acc"]
    header = (tmp_path / "results" / "shapes40" / "table.md").read_text().splitlines()[0]
    assert "mean accuracy (%)" in header and "min accuracy (%)" in header and "mean F1@0.5" in header
    assert "max F1" not in header


BAD_COLUMNS = [
    ("[mean_accuracy]", "'mean_accuracy' is not a metric"),
    ("[]", "at least one metric"),
    ("mean_acc", "must be a list"),
]
for _value, _ in BAD_COLUMNS:
    cli_case(__name__, _value, "mtbench", [f"task.columns={_value}", *TINY])


@pytest.mark.parametrize("value, needle", BAD_COLUMNS)
def test_bad_columns(cli_runs, value, needle):
    proc = cli_runs[__name__, value]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]

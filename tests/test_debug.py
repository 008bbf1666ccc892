"""debug=fast | overfit | profile: short runs, never in the normal results tree."""

from __future__ import annotations

import csv
import json

from conftest import TINY, run_cli, run_dir

#: TINY but with more training data (12 batches of 16) and without the epochs, which each preset sets
BASE = [o for o in TINY if not o.startswith(("trainer.epochs", "trainer.batch_size", "task.n_train"))] + [
    "task.n_train=192",
    "trainer.batch_size=16",
]


def _history(folder):
    with open(folder / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_fast(tmp_path):
    proc = run_cli("mtbench", ["debug=fast", *BASE], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "results").exists()  # the normal results tree is untouched
    folder = run_dir(tmp_path / "debug" / "shapes40", "baseline")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 3 and len(_history(folder)) == 1
    again = run_cli("mtbench", ["debug=fast", *BASE], cwd=tmp_path)  # started afresh, not skipped
    assert again.returncode == 0 and "already completed" not in again.stderr


def test_max_steps_per_epoch_and_eval_examples(tmp_path):
    proc = run_cli(
        "mtbench",
        ["trainer.max_steps_per_epoch=2", "trainer.max_eval_examples=40", *BASE, "trainer.epochs=2"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "results" / "shapes40", "baseline")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 4
    with open(folder / "per_attribute.csv", newline="") as f:
        rates = [float(r["base_rate"]) for r in csv.DictReader(f)]
    assert all(abs(r * 40 - round(r * 40)) < 1e-9 for r in rates)  # base rates of 40 test examples


def test_overfit_drives_the_training_loss_down(tmp_path):
    proc = run_cli(
        "mtbench",
        ["debug=overfit", "trainer.overfit_batches=2", "trainer.epochs=12", "trainer.lr=0.01", *BASE],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "debug" / "shapes40", "baseline")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 12 * 2  # two batches per epoch
    losses = [float(r["train_loss"]) for r in _history(folder)]
    assert losses[-1] < 0.7 * losses[0] and losses == sorted(losses, reverse=True), (
        losses
    )  # the same batches: it only falls


def test_profile_writes_a_trace(tmp_path):
    proc = run_cli("mtbench", ["debug=profile", *BASE], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "debug" / "shapes40", "baseline")
    trace = json.loads((folder / "profile" / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("conv" in n for n in names) and any("ProfilerStep" in n or "aten::" in n for n in names)
    assert "Self CPU" in (folder / "profile" / "ops.txt").read_text()
    assert "profile of 5 training step(s)" in proc.stderr


def test_unknown_debug_preset(tmp_path):
    proc = run_cli("mtbench", ["debug=fats", *TINY], cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "did you mean debug=fast" in errors[0]

"""``RunDir``: what a run folder holds decides skip, resume, refuse or start afresh; each outcome
writes its files (the whole lifecycle through the command is in test_robustness/test_files)."""

from __future__ import annotations

import json

import pytest

from mtbench.errors import MtbenchError
from mtbench.files import atomic_write_bytes, atomic_write_text
from mtbench.report.runs import RunDir, config_diff

CONFIG = {
    "task": {"name": "shapes40", "n_train": 192},
    "trainer": {"lr": 0.003, "progress": True},
    "results_dir": "results",
}
BASE = {"task": "shapes40", "combiner": "baseline", "seed": 0}


def saved(folder: RunDir, status: str, config=CONFIG, checkpoint: bool = False) -> None:
    atomic_write_text(folder.metrics, json.dumps({**BASE, "status": status, "config": config, "started_at": "then"}))
    if checkpoint:
        atomic_write_bytes(folder.checkpoint, b"a checkpoint")
    if status == "completed":  # a completed run has its numbers and its history
        numbers = {"metric_columns": [["error_rate", "error rate (%)", False]], "test": {"error_rate": 9.0}}
        numbers.update(val={"error_rate": 10.0}, train_step_s=0.01, wall_s=1.0)
        record = json.loads(folder.metrics.read_text())
        atomic_write_text(folder.metrics, json.dumps({**record, **numbers}))
        atomic_write_text(folder.history, "epoch,val_error_rate\n1,10.0\n")


def test_config_diff_names_identity_keys_only_and_ignores_retired_ones():
    old = {
        **CONFIG,
        "task": {**CONFIG["task"], "kind": "binary_attributes"},
        "trainer": {"lr": 0.01, "progress": False},
    }
    assert config_diff(old, CONFIG) == ["trainer.lr: 0.01 -> 0.003"]


def test_an_empty_folder_starts_and_completes(tmp_path):
    folder = RunDir(tmp_path / "run")
    assert folder.begin(CONFIG) is False and folder.previous is None
    record = folder.start(BASE, CONFIG)
    assert json.loads(folder.metrics.read_text())["status"] == "running" and list(record)[:4] == [
        "task",
        "combiner",
        "seed",
        "status",
    ]
    atomic_write_bytes(folder.checkpoint, b"x")
    history = [{"epoch": 1, "val_error_rate": 10.0}]
    done = folder.complete(
        record,
        {"test": {"error_rate": 9.0}, "history": history, "test_per_attribute": [{"attribute": "a", "error": 1.0}]},
    )
    assert done["status"] == "completed" and list(done)[-1] == "config" and "history" not in done
    assert folder.history.read_text().splitlines() == ["epoch,val_error_rate", "1,10.0"]
    assert folder.per_attribute.exists() and not folder.checkpoint.exists()
    assert json.loads(folder.metrics.read_text())["test"] == {"error_rate": 9.0}


def test_a_completed_run_with_the_same_config_is_skipped(tmp_path):
    folder = RunDir(tmp_path)
    saved(folder, "completed")
    assert folder.begin(CONFIG) is True and folder.previous["started_at"] == "then"


def test_another_config_is_refused_in_one_line_unless_forced(tmp_path):
    folder = RunDir(tmp_path)
    saved(folder, "completed", config={**CONFIG, "trainer": {"lr": 0.1}})
    with pytest.raises(
        MtbenchError, match=r"holds a completed run with another config \(trainer.lr: 0.1 -> 0.003\); use force=true"
    ) as e:
        folder.begin(CONFIG)
    assert "\n" not in str(e.value)
    assert folder.begin(CONFIG, force=True) is False and not folder.metrics.exists()


def test_an_interrupted_run_resumes_only_with_a_checkpoint(tmp_path):
    folder = RunDir(tmp_path)
    saved(folder, "interrupted")
    assert folder.begin(CONFIG) is False and folder.previous is None  # nothing to resume
    saved(folder, "interrupted", checkpoint=True)
    assert folder.begin(CONFIG) is False and folder.previous["status"] == "interrupted"
    assert folder.start(BASE, CONFIG)["started_at"] == "then"


def test_failed_and_interrupted_runs_say_so(tmp_path):
    folder = RunDir(tmp_path)
    folder.begin(CONFIG)
    record = folder.start(BASE, CONFIG)
    folder.failed(record, "non-finite loss", "Traceback ...")
    assert folder.error_log.read_text() == "Traceback ..."
    assert json.loads(folder.metrics.read_text())["reason"] == "non-finite loss"
    folder.interrupted(record, "interrupted by SIGTERM")
    assert json.loads(folder.metrics.read_text())["status"] == "interrupted"


def test_a_run_that_could_not_start_leaves_nothing(tmp_path):
    folder = RunDir(tmp_path)
    folder.begin(CONFIG)
    folder.start(BASE, CONFIG)
    folder.abandon()
    assert not folder.metrics.exists()


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    atomic_write_text(target, "one")

    def broken(f):
        f.write("half")
        raise RuntimeError("the writer failed")

    from mtbench.files import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "one" and [p.name for p in target.parent.iterdir()] == ["file.txt"]

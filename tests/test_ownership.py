"""One process per run folder (the .lock), and signals at any moment of a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, command, run_cli, run_dir

SWEEP = "results/shapes40"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(extra)
    return env


def _start(cwd: Path, args: list[str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        command("mtbench") + args,
        cwd=cwd,
        env=_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _paused(cwd: Path, args: list[str], point: str) -> tuple[subprocess.Popen, Path]:
    """A run stopped at ``point`` (see ``mtbench.train.loop.pause_point``); removing the marker lets it go on."""
    marker = cwd / f"paused-{point}"
    proc = _start(cwd, args, MTBENCH_PAUSE_AT=point, MTBENCH_PAUSE_MARKER=str(marker), MTBENCH_PAUSE_S="120")
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before reaching {point}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"the run never reached {point}"
        time.sleep(0.02)
    return proc, marker


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def numbers(folder: Path) -> dict:
    m = _metrics(folder)
    history = pd.read_csv(folder / "history.csv").drop(columns=["train_step_s"])
    return {"test": m["test"], "val": m["val"], "best_epoch": m["best_epoch"], "history": history.to_dict("list")}


def consistent(folder: Path) -> None:
    """A completed run's files are that run's: history rows = epochs, the best epoch's row holds
    metrics.json's validation numbers, no checkpoint and no lock left."""
    m = _metrics(folder)
    assert m["status"] == "completed", m
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == list(range(1, m["epochs"] + 1))
    row = history[history["epoch"] == m["best_epoch"]].iloc[0]
    for key, value in m["val"].items():
        assert row[f"val_{key}"] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert not (folder / "checkpoint.pt").exists()
    assert not (folder / ".lock").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_cli("mtbench", TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return numbers(run_dir(cwd / SWEEP, "baseline"))


# -- owned run folders -----------------------------------------------------------------------


def test_second_process_skips_a_live_run_and_writes_nothing_into_it(tmp_path, reference):
    first, marker = _paused(tmp_path, TINY, "test")  # trained, holding the lock
    folder = run_dir(tmp_path / SWEEP, "baseline")
    lock = json.loads((folder / ".lock").read_text())
    assert lock["host"] == socket.gethostname() and lock["pid"] == first.pid
    # the holder's heartbeat touches .lock every 30 s: its content is compared, not its mtime
    ours = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name not in ("mtbench.log", ".hydra", ".lock")}
    second = run_cli("mtbench", TINY, cwd=tmp_path)
    assert second.returncode == 3, second.stderr[-3000:]  # the other process owns the run
    assert f"is being run by {socket.gethostname()}:{first.pid}, skipped" in second.stderr
    assert "mtbench: error: 1 run(s) are owned by another mtbench process that is running them" in second.stderr
    assert "Traceback" not in second.stderr
    assert {
        p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name not in ("mtbench.log", ".hydra", ".lock")
    } == ours
    assert json.loads((folder / ".lock").read_text()) == lock
    marker.unlink()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    consistent(folder)
    assert numbers(folder) == reference


def test_duplicate_concurrent_sweeps_each_run_once_and_consistent(tmp_path):
    args = ["-m", "combiner=baseline,clip", *TINY]
    procs = [_start(tmp_path, args) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    # each trains what it reached first; one that skipped a run the other held exits 3 and says so
    assert all(p.returncode in (0, 3) for p in procs), [e[-2000:] for e in errs]
    for p, e in zip(procs, errs):
        assert (p.returncode == 3) == ("owned by another mtbench process" in e), e[-2000:]
    for combiner in ("baseline", "clip"):
        folder = run_dir(tmp_path / SWEEP, combiner)
        consistent(folder)
        trained = sum(f"{combiner} seed=0 epoch 2/2" in e for e in errs)
        assert trained == 1, f"{combiner} trained {trained} times"


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, reference):
    proc, marker = _paused(tmp_path, TINY, "setup")
    proc.kill()  # SIGKILL: the lock stays behind
    proc.wait()
    folder = run_dir(tmp_path / SWEEP, "baseline")
    assert json.loads((folder / ".lock").read_text())["pid"] == proc.pid
    again = run_cli("mtbench", TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"process {proc.pid} is gone" in again.stderr and "taking the run over" in again.stderr
    consistent(folder)
    assert numbers(folder) == reference


def test_lock_of_another_host(tmp_path, monkeypatch):
    from mtbench.report import lock as lk

    path = tmp_path / ".lock"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1234, "started": "x", "token": "t"}))
    with pytest.raises(lk.Locked, match="being run by elsewhere:1234"):
        lk.RunLock(tmp_path).acquire()  # refreshed recently: alive
    assert json.loads(path.read_text())["host"] == "elsewhere"
    old = time.time() - lk.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    with lk.RunLock(tmp_path):  # not refreshed for too long: stale
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_lock_heartbeat_refreshes_and_release_leaves_other_locks(tmp_path, monkeypatch):
    from mtbench.report import lock as lk

    monkeypatch.setattr(lk, "HEARTBEAT_S", 0.05)
    with lk.RunLock(tmp_path) as held:
        old = time.time() - 1000
        os.utime(held.path, (old, old))
        time.sleep(0.3)
        assert time.time() - held.path.stat().st_mtime < 100
        with pytest.raises(lk.Locked):  # this process holds it: not stale, not taken twice
            lk.RunLock(tmp_path).acquire()
        held.path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "other"}))
    assert held.path.exists(), "a lock that is no longer ours is never removed"


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment, reason, resumes",
    [("setup", "SIGTERM before the first step", False), ("test", "during the final test evaluation", True)],
    ids=["before_the_first_step", "during_the_final_test_evaluation"],
)
def test_sigterm_at_either_end_of_the_run(tmp_path, reference, moment, reason, resumes):
    """Before the first step: nothing to resume; during the final test evaluation: the
    checkpoint is kept and the next run resumes from it."""
    proc, marker = _paused(tmp_path, TINY, moment)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    folder = run_dir(tmp_path / SWEEP, "baseline")
    m = _metrics(folder)
    assert m["status"] == "interrupted" and reason in m["reason"]
    assert not (folder / ".lock").exists()
    if resumes:
        assert (folder / "checkpoint.pt").exists()
    again = run_cli("mtbench", TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    if resumes:
        assert "resuming from" in again.stderr
        consistent(folder)
    assert numbers(folder) == reference


def test_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
    proc, marker = _paused(tmp_path, TINY, "steps")  # a first signal here waits for the next step
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "a first Ctrl-C lets the step finish"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "mtbench: interrupted again, stopping now"
    folder = run_dir(tmp_path / SWEEP, "baseline")
    m = _metrics(folder)
    assert m["status"] == "interrupted" and "second SIGINT" in m["reason"]
    assert not (folder / ".lock").exists()

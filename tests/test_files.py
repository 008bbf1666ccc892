"""Files that are not what they seem: metrics.json, run folders, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, copy_of, one_error_line, run_cli
from hydra import compose, initialize_config_module

from mtbench.errors import MtbenchError
from mtbench.train import checkpoint as ckpt


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ------------------------------------------------------------------------------ metrics.json


@pytest.mark.parametrize("content", ["[1, 2]", '"completed"', "null"])
def test_metrics_json_that_is_not_an_object_is_unreadable(completed, tmp_path, content):
    """Like a cut-off metrics.json: a warning naming the file, and the run starts again."""
    cwd, folder = copy_of(completed, tmp_path)
    (folder / "metrics.json").write_text(content)
    proc = run_cli("mtbench", TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{folder / 'metrics.json'} is unreadable" in proc.stderr and "starts again" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((folder / "metrics.json").read_text())["status"] == "completed"


# ------------------------------------------------------------------------------ folders


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("blocked", ["results/shapes40", "results/shapes40/runs/baseline"])
def test_a_file_where_a_folder_belongs(tmp_path, blocked, multirun):
    path = tmp_path / blocked
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")
    proc = run_cli("mtbench", [*(["-m", "combiner=baseline"] if multirun else []), *TINY], cwd=tmp_path)
    line = one_error_line(proc)
    assert blocked in line and "is a file, not a folder" in line
    assert path.read_text() == "not a folder"


def test_a_stray_file_under_another_combiner_does_not_block_a_sweep(tmp_path):
    (tmp_path / "results/shapes40/runs").mkdir(parents=True)
    (tmp_path / "results/shapes40/runs/pcgrad").write_text("not a folder")
    from mtbench.cli_folders import _check_sweep_folder

    _check_sweep_folder(tmp_path / "results/shapes40", ["baseline"])  # no error: pcgrad is not swept
    with pytest.raises(SystemExit):
        _check_sweep_folder(tmp_path / "results/shapes40", ["baseline", "pcgrad"])


def test_read_only_run_folder_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """(Simulated with os.access: permissions do not bind the root user.)"""
    from mtbench import cli_folders

    folder = tmp_path / "results/shapes40/runs/baseline/seed=0"
    (folder / ".hydra").mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(cli_folders.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    with pytest.raises(SystemExit) as e:
        cli_folders._check_run_folder(folder)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder} is not writable" in err
    with pytest.raises(SystemExit) as e:
        cli_folders._check_sweep_folder(tmp_path / "results/shapes40", None)
    assert e.value.code == 2 and f"{folder} is not writable" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="the root user writes into read-only folders")
def test_read_only_run_folder_through_the_cli(completed, tmp_path):
    cwd, folder = copy_of(completed, tmp_path)
    folder.chmod(0o555)
    try:
        line = one_error_line(run_cli("mtbench", TINY, cwd=cwd))
        assert str(folder.relative_to(cwd)) in line and "not writable" in line
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_checksum_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {"w": torch.arange(1000, dtype=torch.float32), "epoch": 3}
    ckpt.save(payload, path)
    assert path.read_bytes().startswith(ckpt.MAGIC)
    loaded = ckpt.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], payload["w"])
    legacy = tmp_path / "legacy.pt"  # written by torch.save alone (earlier versions): refused, not read
    torch.save(payload, legacy)
    with pytest.raises(MtbenchError, match="not a checkpoint of this mtbench"):
        ckpt.load(legacy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "legacy.pt"]  # no temporary file left


@pytest.mark.parametrize("where", ["payload", "digest"])
def test_checkpoint_with_flipped_bytes_is_refused(tmp_path, where):
    path = tmp_path / "checkpoint.pt"
    ckpt.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    raw = bytearray(path.read_bytes())
    if where == "payload":
        raw[len(raw) // 2] ^= 0x01
    else:  # one hex digit of the stored SHA-256 replaced by another
        i = len(ckpt.MAGIC) + 3
        raw[i] = ord("0") if raw[i] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))
    with pytest.raises(MtbenchError) as e:
        ckpt.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "SHA-256" in msg and "force=true" in msg


class _Stop(Exception):
    pass


def test_flipped_checkpoint_through_the_cli(completed, tmp_path):
    """A run stopped after epoch 1 whose checkpoint then changed on disk: the re-run is a
    one-line error naming the checkpoint (never resumed silently); force=true starts afresh."""
    from mtbench.train import train

    cwd, folder = copy_of(completed, tmp_path)
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=TINY)

    def stop(history):
        raise _Stop

    with pytest.raises(_Stop):
        train(cfg, run_dir=folder, on_epoch=stop)
    path = folder / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    m = json.loads((folder / "metrics.json").read_text())
    m["status"] = "running"
    (folder / "metrics.json").write_text(json.dumps(m))
    line = one_error_line(run_cli("mtbench", TINY, cwd=cwd))
    assert "checkpoint.pt" in line and "corrupt" in line and "SHA-256" in line
    assert json.loads((folder / "metrics.json").read_text())["status"] == "running", "the run's record was touched"
    forced = run_cli("mtbench", [*TINY, "force=true"], cwd=cwd)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert json.loads((folder / "metrics.json").read_text())["status"] == "completed" and not path.exists()


def test_stale_temporary_files_and_a_completed_runs_checkpoint_are_removed(completed, tmp_path):
    cwd, folder = copy_of(completed, tmp_path)
    stale = folder / f".checkpoint.pt.{dead_pid()}.tmp"
    stale.write_bytes(b"half a checkpoint")
    leftover = folder / "checkpoint.pt"  # the completed run was killed before removing it
    ckpt.save({"epoch": 3}, leftover)
    live = folder / f".checkpoint.pt.{os.getpid()}.tmp"  # of a process that is alive: kept
    live.write_bytes(b"being written")
    before = (folder / "metrics.json").read_text()
    proc = run_cli("mtbench", TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already completed" in proc.stderr
    assert not stale.exists() and not leftover.exists() and live.exists()
    assert str(stale.name) in proc.stderr and "needs no checkpoint" in proc.stderr
    assert (folder / "metrics.json").read_text() == before

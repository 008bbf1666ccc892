"""Files from elsewhere are safe to open: no file in a run folder runs code, no foreign or
damaged file changes the numbers, every damaged file is one line naming it (docs/reliability.md).

The malicious cases write a marker file when their payload runs: the marker must never appear.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, copy_of, one_error_line, run_cli, run_path

from mtbench.errors import MtbenchError
from mtbench.train import checkpoint as ckpt


class Payload:
    """An object whose unpickling creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def raw_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state": Payload(marker)})


def torch_zip(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "state": Payload(marker)}, buf)
    return buf.getvalue()


def torch_legacy(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"state": Payload(marker)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def with_header(body: bytes, magic: bytes = ckpt.MAGIC) -> bytes:
    return magic + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


CRAFTED = {
    "raw pickle": raw_pickle,
    "torch zip": torch_zip,
    "torch legacy": torch_legacy,
    "checksum header": lambda m: with_header(torch_zip(m)),
    "old checksum header": lambda m: with_header(torch_zip(m), ckpt.OLD_MAGIC),
}


# ------------------------------------------------------------------------------ no file runs code


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_checkpoint_runs_no_code(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(CRAFTED[kind](marker))
    with pytest.raises(MtbenchError) as e:
        ckpt.load(path)
    assert not marker.exists()
    assert "\n" not in str(e.value) and str(path) in str(e.value) and "force=true" in str(e.value)


@pytest.mark.slow
def test_crafted_checkpoint_in_a_fresh_run_folder_through_the_cli(tmp_path):
    """A crafted checkpoint placed where a run's checkpoint goes, before the first run."""
    marker = tmp_path / "marker"
    folder = tmp_path / run_path(TINY)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(with_header(torch_zip(marker)))
    line = one_error_line(run_cli("mtbench", TINY, cwd=tmp_path))
    assert "checkpoint.pt" in line and not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raw pickle", "torch zip", "torch legacy"])
def test_crafted_model_file_runs_no_code(completed, tmp_path, kind):
    cwd, folder = copy_of(completed, tmp_path)
    marker = tmp_path / "marker"
    (folder / "model.pt").write_bytes(CRAFTED[kind](marker))
    line = one_error_line(run_cli("mtbench-eval", [str(folder)], cwd=cwd))
    assert "model.pt" in line and not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        {"_target_": "builtins.open", "file": "MARKER", "mode": "w", "name": "small_cnn"},
        {"name": "small_cnn", "width": 8, "rep_dim": 32, "hub": {"_target_": "torch.hub.load", "repo_or_dir": "x/y"}},
    ],
    ids=["_target_", "hub entry"],
)
def test_metrics_json_naming_code_is_refused(completed, tmp_path, model):
    cwd, folder = copy_of(completed, tmp_path)
    marker = tmp_path / "marker"
    record = json.loads((folder / "metrics.json").read_text())
    record["config"]["model"] = json.loads(json.dumps(model).replace("MARKER", str(marker)))
    (folder / "metrics.json").write_text(json.dumps(record))
    line = one_error_line(run_cli("mtbench-eval", [str(folder)], cwd=cwd))
    assert "metrics.json" in line and "_target_" in line and "--model-target" in line
    assert not marker.exists()


@pytest.mark.slow
def test_saved_checkpoints_load_with_weights_only(completed, tmp_path):
    """A run's checkpoint is plain data: ``torch.load(..., weights_only=True)`` reads it."""
    from hydra import compose, initialize_config_module

    from mtbench.train import train

    cwd, folder = copy_of(completed, tmp_path)
    (folder / "metrics.json").unlink()
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=TINY)

    class Stop(Exception):
        pass

    def stop(history):
        raise Stop

    with pytest.raises(Stop):
        train(cfg, run_dir=folder, on_epoch=stop)
    raw = (folder / "checkpoint.pt").read_bytes()
    body = raw[raw.index(b"\n") + 1 :]
    payload = torch.load(io.BytesIO(body), weights_only=True)
    assert payload["run"] == ckpt.run_identity(cfg) and payload["state"]["epoch"] == 2


# ------------------------------------------------------------------------------ data files


def test_cifar100_pickle_resaved_by_numpy2_loads(tmp_path):
    """A CIFAR-100 pickle re-saved with NumPy 2 (protocol 5: ``numpy._core.numeric._frombuffer``)
    is a valid file: it loads with the same arrays; a global outside the allow-list still does not."""
    import importlib.util

    import numpy as np

    from mtbench.data import cifar100 as c100

    spec = importlib.util.spec_from_file_location(
        "make_fake", Path(__file__).parents[1] / "scripts/make_fake_cifar100.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    folder = script.write_fake_cifar100(tmp_path, n=10, n_test=5)
    before = c100.load_cifar100(tmp_path)
    for name in ("train", "test", "meta"):
        with open(folder / name, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
        data = pickle.dumps(obj, protocol=5)
        if name != "meta":
            assert b"_frombuffer" in data and b"numpy._core" in data
        (folder / name).write_bytes(data)
    after = c100.load_cifar100(tmp_path)
    assert np.array_equal(before.train_images.numpy(), after.train_images.numpy())
    marker = tmp_path / "marker"
    (folder / "test").write_bytes(pickle.dumps({"data": Payload(marker)}, protocol=5))
    with pytest.raises(MtbenchError, match="is not allowed"):
        c100.load_cifar100(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------ no foreign file is loaded


def _stopped_after_epoch_1(folder: Path, overrides: list[str]):
    """Train ``overrides`` in ``folder`` and stop after epoch 1: its checkpoint is written."""
    from hydra import compose, initialize_config_module

    from mtbench.train import train

    with initialize_config_module("mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)

    class Stop(Exception):
        pass

    def stop(history):
        raise Stop

    with pytest.raises(Stop):
        train(cfg, run_dir=folder, on_epoch=stop)
    return cfg


def _resign(path: Path, change) -> None:
    """Load the checkpoint, ``change`` its payload, write it back with a valid checksum."""
    payload = ckpt.load(path)
    change(payload)
    ckpt.save(payload, path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["another seed", "another combiner", "epoch rewritten", "other settings"])
def test_foreign_checkpoint_with_a_valid_checksum_is_refused(tmp_path, case):
    from mtbench.train import train

    here = tmp_path / "here"
    cfg = _stopped_after_epoch_1(here, TINY)
    path = here / "checkpoint.pt"
    if case == "epoch rewritten":
        _resign(path, lambda p: p["state"].update(epoch=3))
    else:
        other = {
            "another seed": ["seed=1"],
            "another combiner": ["combiner=mgda"],
            "other settings": ["trainer.lr=0.01"],
        }
        elsewhere = tmp_path / "elsewhere"
        _stopped_after_epoch_1(elsewhere, TINY + other[case])
        shutil.copy(elsewhere / "checkpoint.pt", path)
    with pytest.raises(MtbenchError) as e:
        train(cfg, run_dir=here)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "force=true" in msg
    assert ("inconsistent" if case == "epoch rewritten" else "belongs to another run") in msg


@pytest.mark.slow
def test_checkpoint_state_of_every_combiner_loads_with_weights_only(tmp_path, monkeypatch):
    """Every registered combiner's state after a few steps is plain data (weights_only)."""
    monkeypatch.syspath_prepend(Path(__file__).parent / "combiners")
    from test_contract import CASES, T, grads_after, make_model

    from mtbench.combiners import COMBINERS

    for name, options in CASES:
        model = make_model()
        comb = COMBINERS[name](T, **options)
        comb.prepare(model)
        for step in range(2):
            grads_after(model, comb, seed=1 + step)
        ckpt.save({"format": 2, "combiner": comb.state_dict()}, tmp_path / "c.pt")
        ckpt.load(tmp_path / "c.pt")  # raises if anything needs code to load


# ------------------------------------------------------------------------------ one line, never a traceback


def _write_metrics(folder: Path, content) -> None:
    (folder / "metrics.json").write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["garbage", "list", "no config", "deeply nested", "empty model.pt", "truncated model.pt", "batch 0", "batch -3"],
)
def test_eval_damaged_inputs_are_one_line(completed, tmp_path, case):
    cwd, folder = copy_of(completed, tmp_path)
    record = json.loads((folder / "metrics.json").read_text())
    args = [str(folder)]
    if case == "garbage":
        (folder / "metrics.json").write_bytes(b"\x00\xffnot json")
    elif case == "list":
        _write_metrics(folder, [1, 2])
    elif case == "no config":
        record.pop("config")
        _write_metrics(folder, record)
    elif case == "deeply nested":
        _write_metrics(folder, "[" * 100000 + "]" * 100000)
    elif case == "empty model.pt":
        (folder / "model.pt").write_bytes(b"")
    elif case == "truncated model.pt":
        raw = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(raw[: len(raw) // 2])
    else:
        args += ["--batch-size", case.split()[1]]
    line = one_error_line(run_cli("mtbench-eval", args, cwd=cwd))
    expected = {"batch 0": "--batch-size 0", "batch -3": "--batch-size -3"}.get(case)
    assert (expected or ("model.pt" if "model.pt" in case else "metrics.json")) in line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["deeply nested", "numbers removed", "test as text", "seed list"])
def test_table_skips_damaged_metrics_naming_them(completed, tmp_path, case):
    cwd, folder = copy_of(completed, tmp_path)
    record = json.loads((folder / "metrics.json").read_text())
    if case == "deeply nested":
        _write_metrics(folder, "[" * 100000 + "]" * 100000)
    elif case == "numbers removed":
        for key in ("test", "val", "train_step_s"):
            record.pop(key)
        _write_metrics(folder, record)
    elif case == "test as text":
        _write_metrics(folder, {**record, "test": "text"})
    else:
        _write_metrics(folder, {**record, "seed": [0, 1]})
    proc = run_cli("mtbench-table", ["results/shapes40", "--no-plots"], cwd=cwd)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr[-2000:]
    assert f"skipping {folder.relative_to(cwd) / 'metrics.json'}" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "content",
    [b"", b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe" * 20, b'a,b\n1,2,3\n"x\n', b"combiner,error_rate\nbaseline,high\n"],
)
def test_table_bad_paper_csv_is_one_line(completed, tmp_path, content):
    cwd, _ = copy_of(completed, tmp_path)
    paper = cwd / "paper.csv"
    paper.write_bytes(content)
    proc = run_cli("mtbench-table", ["results/shapes40", "--no-plots", "--paper", str(paper)], cwd=cwd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mtbench-table: error:")]
    assert f"paper CSV {paper}" in line


@pytest.mark.slow
def test_table_on_a_read_only_folder_is_one_line(completed, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("the root user writes into read-only folders")
    cwd, _ = copy_of(completed, tmp_path)
    (cwd / "results/shapes40").chmod(0o555)
    try:
        proc = run_cli("mtbench-table", ["results/shapes40", "--no-plots"], cwd=cwd)
    finally:
        (cwd / "results/shapes40").chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cannot write" in proc.stderr


@pytest.mark.slow
def test_table_on_a_full_disk_is_one_line(completed, tmp_path, monkeypatch, capsys):
    """ENOSPC while the tables are written (the disk-full error injected into the writes)."""
    import errno
    import os

    from mtbench import files
    from mtbench.report import table_main

    cwd, _ = copy_of(completed, tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    assert table_main.main([str(cwd / "results/shapes40"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "free some disk space" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../outside", "a/b", ".."])
def test_name_that_leaves_results_dir_is_refused(tmp_path, name):
    line = one_error_line(run_cli("mtbench", [*TINY, f"name={name}"], cwd=tmp_path / "."))
    assert f"name={name}" in line
    assert not (tmp_path.parent / "outside").exists() and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.slow
def test_results_dir_under_proc_is_one_line(tmp_path):
    line = one_error_line(run_cli("mtbench", [*TINY, "results_dir=/proc/mtbench_results"], cwd=tmp_path))
    assert "results_dir=/proc/mtbench_results" in line


def test_ctrl_c_at_start_up_is_one_line(monkeypatch, capsys):
    from mtbench import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.count("\n") == 1 and "interrupted while starting up" in err


def test_disk_full_outside_a_run_is_one_line(monkeypatch, capsys):
    import errno

    from mtbench import cli

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "results/.sweep.json")

    monkeypatch.setattr(cli, "_main", full)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "results/.sweep.json" in err and "free some disk space" in err


@pytest.mark.parametrize("what", ["lock", "checkpoint tmp"])
def test_pid_that_overflows_is_a_dead_process(tmp_path, what):
    from mtbench.report import lock

    huge = 10**30
    if what == "lock":
        path = tmp_path / lock.LOCK
        path.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": huge, "token": "t"}))
        with lock.RunLock(tmp_path):  # taken over, no OverflowError
            assert lock.read_lock(path)["pid"] != huge
    else:
        stale = tmp_path / f".checkpoint.pt.{huge}.tmp"
        stale.write_bytes(b"half")
        assert ckpt.remove_stale_tmp(tmp_path, "checkpoint.pt") == [stale] and not stale.exists()


def test_temporary_files_of_a_killed_writer_are_cleaned(tmp_path):
    from mtbench.report.runs import RunDir

    left = [tmp_path / ".metrics.json.k2j3.tmp", tmp_path / ".history.csv.x9q.tmp", tmp_path / ".model.pt.abc.tmp"]
    for p in left:
        p.write_text("half")
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    RunDir(tmp_path).tidy(None)
    assert not any(p.exists() for p in left) and keep.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "damaged"])
def test_completed_run_without_its_history_is_reported(completed, tmp_path, damage):
    cwd, folder = copy_of(completed, tmp_path)
    if damage == "deleted":
        (folder / "history.csv").unlink()
    else:
        (folder / "history.csv").write_text("epoch,train_loss\n1,0.5\n")  # one row of two
    line = one_error_line(run_cli("mtbench", TINY, cwd=cwd))
    assert "history.csv" in line and "force=true" in line


# ------------------------------------------------------------------------------ the Python API


def _heads(seed: int = 0):
    torch.manual_seed(seed)
    return [torch.nn.Linear(5, 1) for _ in range(3)]


@pytest.mark.parametrize("bad", ["constant", "detached", "stacked constant", "other tensors"])
def test_backward_names_a_loss_that_does_not_depend_on_the_features(bad):
    import mtbench

    heads = _heads()
    features = torch.randn(4, 5, requires_grad=True) * 2
    good = [h(features).pow(2).mean() for h in heads[:2]]
    other = {
        "constant": torch.tensor(1.0),
        "detached": heads[2](features).mean().detach(),
        "stacked constant": torch.tensor(1.0),
        "other tensors": torch.randn(3, requires_grad=True).sum(),
    }[bad]
    losses = torch.stack([*good, other]) if bad == "stacked constant" else [*good, other]
    with pytest.raises(ValueError) as e:
        mtbench.backward(losses, features, "baseline")
    assert str(e.value).startswith("losses[2] does not depend on features") and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["pcgrad", "graddrop", "mgda"])
def test_backward_on_leaf_features_matches_features_from_a_trunk(name):
    """A leaf ``features`` (the caller's own embedding) gets the combined gradient: the same as
    a parameter that the features are an identity function of."""
    import mtbench

    heads = _heads()
    torch.manual_seed(1)
    data = torch.randn(4, 5)
    leaf = data.clone().requires_grad_(True)
    mtbench.backward([h(leaf).pow(2).mean() for h in heads], leaf, name, generator=torch.Generator().manual_seed(3))
    param = data.clone().requires_grad_(True)
    features = param * 1.0
    for h in heads:
        h.zero_grad()
    mtbench.backward(
        [h(features).pow(2).mean() for h in heads], features, name, generator=torch.Generator().manual_seed(3)
    )
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    torch.testing.assert_close(leaf.grad, param.grad)


def test_non_finite_gram_matrix_reason_names_epoch_and_step(tmp_path, monkeypatch):
    """The solver's own check (``jd.gram_np64``) raising at the third step of a run: the run's
    failed reason says where."""
    from hydra import compose, initialize_config_module

    from mtbench.combiners import jd
    from mtbench.train import TrainingFailed, train
    from mtbench.train.step import TrainStep

    calls = {"n": 0}
    original = TrainStep.__call__

    def third_step_nan(self, x, y, *more):
        calls["n"] += 1
        if calls["n"] == 3:
            jd.gram_np64(torch.full((2, 2), float("nan")), "mgda")
        return original(self, x, y, *more)

    monkeypatch.setattr(TrainStep, "__call__", third_step_nan)
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "combiner=mgda"])
    with pytest.raises(TrainingFailed) as e:
        train(cfg)
    assert str(e.value).startswith("non-finite Gram matrix at epoch 1, step 3 (mgda:")


def test_disk_full_before_hydra_writes_its_files_is_one_line(tmp_path, monkeypatch, capsys):
    """The run folder's disk cannot take Hydra's ``.hydra/*.yaml``: one line, exit 2, before
    Hydra starts writing (its own error would be a traceback)."""
    import errno
    import os

    from mtbench import cli_folders

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_folders.os, "fsync", full)
    with pytest.raises(SystemExit) as e:
        cli_folders._check_space(tmp_path / "results" / "run")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"no space left on the disk of {tmp_path}" in err
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["numbers removed", "test as text"])
def test_completed_run_with_damaged_numbers_is_reported_by_the_rerun(completed, tmp_path, damage):
    cwd, folder = copy_of(completed, tmp_path)
    record = json.loads((folder / "metrics.json").read_text())
    if damage == "numbers removed":
        for key in ("test", "val", "train_step_s"):
            record.pop(key)
    else:
        record["test"] = "text"
    (folder / "metrics.json").write_text(json.dumps(record))
    line = one_error_line(run_cli("mtbench", TINY, cwd=cwd))
    assert "metrics.json" in line and "force=true" in line

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
from conftest import TINY, run_cli, run_dir, run_path

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


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mtbench: error:")]
    return line


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """A working folder holding one completed TINY run with its model.pt."""
    cwd = tmp_path_factory.mktemp("completed")
    proc = run_cli("mtbench", TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def copy_of(completed: Path, tmp_path: Path) -> tuple[Path, Path]:
    cwd = tmp_path / "work"
    shutil.copytree(completed, cwd)
    return cwd, run_dir(cwd / "results" / "shapes40", "baseline", 0)


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

"""logger=: what TensorBoard, MLflow and W&B (offline) received, read back with each library's
own reader, compared with the run's own files; the default (csv) writes nothing more; a missing
library is refused in one line before the run starts."""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest
from conftest import TINY, cli_case, run_cli, run_dir

_MISSING = [m for m in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(m) is None]
if _MISSING:
    if os.environ.get("CI"):  # .ci/run installs the extras: the tests must run there
        raise ImportError(f"{', '.join(_MISSING)} missing: pip install -e '.[tensorboard,wandb,mlflow]'")
    pytest.skip(
        f"needs the logger extras: pip install -e '.[tensorboard,wandb,mlflow]' ({', '.join(_MISSING)} missing)",
        allow_module_level=True,
    )

#: the files every run folder holds after a completed run with logger=csv
TODAY = {"metrics.json", "history.csv", "per_attribute.csv", "mtbench.log", ".hydra", "model.pt"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep (of one gradnorm run) with the three backends at once."""
    cwd = tmp_path_factory.mktemp("loggers")
    proc = run_cli(
        "mtbench",
        ["-m", "logger=[tensorboard,mlflow,wandb]", "combiner=gradnorm", *TINY],
        cwd=cwd,
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = cwd / "results" / "shapes40"
    folder = run_dir(results, "gradnorm")
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    return cwd, results, folder, metrics, history


def test_tensorboard_event_files(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, results, folder, metrics, history = swept
    ea = EventAccumulator(str(folder / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    ea.Reload()
    scalars = ea.Tags()["scalars"]
    for key in ("train_loss", "val_error_rate", "val_max_f1", "train_step_s", "lr", "combiner_w_min", "combiner_w_max"):
        assert key in scalars, (key, scalars)
    loss = ea.Scalars("train_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([float(r["train_loss"]) for r in history], rel=1e-6)
    assert [e.value for e in ea.Scalars("combiner_w_max")] == pytest.approx(
        [float(r["combiner_w_max"]) for r in history], rel=1e-6
    )
    (test,) = ea.Scalars("test_error_rate")
    assert test.step == metrics["best_epoch"] and test.value == pytest.approx(metrics["test"]["error_rate"], rel=1e-6)
    texts = ea.Tags()["tensors"]
    assert any(t.startswith("config") for t in texts) and any(t.startswith("tags") for t in texts)
    tags = next(t for t in texts if t.startswith("tags"))
    text = ea.Tensors(tags)[0].tensor_proto.string_val[0].decode()
    assert f"variant={metrics['variant']}" in text and "seed=0" in text
    # the sweep's comparison table, in the results folder's own event files
    ea = EventAccumulator(str(results / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    (tag,) = [t for t in ea.Tags()["tensors"] if t.startswith("comparison_table")]
    assert "| gradnorm |" in ea.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def test_mlflow_store(swept):
    from mtbench.report.loggers import mlflow_client

    cwd, results, folder, metrics, history = swept
    # the default store: one SQLite file, which MLflow opens without MLFLOW_ALLOW_FILE_STORE
    assert (cwd / "results" / "mlflow.db").is_file() and not (cwd / "results" / "mlruns").exists()
    client = mlflow_client(f"sqlite:///{(cwd / 'results' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("shapes40")
    runs = client.search_runs([experiment.experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("combiner") == "gradnorm"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["variant"] == metrics["variant"] and run.data.tags["seed"] == "0"
    assert (
        run.data.params["seed"] == "0"
        and run.data.params["trainer.epochs"] == "2"
        and run.data.params["combiner.name"] == "gradnorm"
    )
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == [1, 2]
    assert [m.value for m in sorted(loss, key=lambda m: m.step)] == pytest.approx(
        [float(r["train_loss"]) for r in history], rel=1e-9
    )
    assert len(client.get_metric_history(run.info.run_id, "val_max_f1")) == 2
    assert len(client.get_metric_history(run.info.run_id, "combiner_w_min")) == 2
    assert run.data.metrics["test_max_f1"] == pytest.approx(metrics["test"]["max_f1"])
    assert run.data.metrics["run_train_step_s"] == pytest.approx(metrics["train_step_s"])
    assert "config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(cwd))).read_text())
    assert config == metrics["config"]
    (table,) = [r for r in runs if r.data.tags.get("kind") == "table"]
    files = {a.path for a in client.list_artifacts(table.info.run_id)}
    assert {"table.md", "table.csv"} <= files


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-*.wandb``: a LevelDB-style log of 32 KiB blocks,
    each record a ``wandb_internal.Record`` protobuf of wandb's own definitions)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        part += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_wandb_offline_run(swept):
    _, results, folder, metrics, history = swept
    (path,) = glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = _wandb_records(Path(path))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert "seed=0" in run.tags and "gradnorm" in run.tags
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["seed"] == 0 and config["combiner"]["name"] == "gradnorm" and config["trainer"]["epochs"] == 2
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["train_loss"] for row in rows] == pytest.approx([float(r["train_loss"]) for r in history], rel=1e-9)
    assert all("val_error_rate" in row and "train_step_s" in row and "combiner_w_min" in row for row in rows)
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in r.summary.update})
    assert (
        summary["test_error_rate"] == pytest.approx(metrics["test"]["error_rate"]) and summary["status"] == "completed"
    )
    # the comparison table: its own offline run in the results folder
    tables = [p for p in glob.glob(str(results / "wandb" / "offline-run-*" / "run-*.wandb"))]
    assert len(tables) == 1
    summary = {}
    for r in _wandb_records(Path(tables[0])):
        if r.WhichOneof("record_type") == "summary":
            summary.update({(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in r.summary.update})
    assert "| gradnorm |" in summary["comparison_table_md"]


def test_default_logger_writes_todays_files_only(tmp_path):
    proc = run_cli("mtbench", TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "results" / "shapes40", "baseline")
    assert {p.name for p in folder.iterdir()} == TODAY
    assert (
        not (tmp_path / "results" / "mlruns").exists()
        and not (tmp_path / "results" / "mlflow.db").exists()
        and not (tmp_path / "results" / "shapes40" / "tensorboard").exists()
    )
    # logger=csv is the default: the same folder (the variant does not change), skipped as completed
    again = run_cli("mtbench", ["logger=tensorboard", *TINY], cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stderr + again.stdout


#: wandb cannot be imported in this run (as without the package)
cli_case(__name__, "no wandb", "mtbench", ["logger=[tensorboard,wandb]", *TINY], prelude="sys.modules['wandb'] = None")


def test_missing_library_names_the_extra(cli_runs):
    """Without the package: one line naming the extra, exit 2, no run folder."""
    proc = cli_runs[__name__, "no wandb"]
    tmp_path = proc.cwd
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert 'pip install -e ".[wandb]"' in errors[0]
    assert not list((tmp_path / "results").glob("shapes40/runs/*/*/seed=0/metrics.json"))


BAD_LOGGER = [
    (["logger=tensorbord"], "did you mean logger=tensorboard"),
    (["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes' is not allowed"),
]
for _args, _ in BAD_LOGGER:
    cli_case(__name__, tuple(_args), "mtbench", [*_args, *TINY])


@pytest.mark.parametrize("args, needle", BAD_LOGGER)
def test_bad_logger_input(cli_runs, args, needle):
    proc = cli_runs[__name__, tuple(args)]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]

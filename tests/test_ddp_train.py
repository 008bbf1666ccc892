"""``trainer.strategy=ddp`` (several processes, gloo on CPUs): the run's numbers equal the
single-process run's; a batch that does not split is refused; a killed rank fails the run and
the re-run resumes exactly; a rank that raises or stops answering fails the run (never a hang)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from mtbench.errors import MtbenchError
from mtbench.train.distributed import SyncBatchNorm, convert_sync_batchnorm, rank_slice
from mtbench.train.options import check_trainer

#: a batch order with an uneven last batch (201 = 3 * 64 + 9: 5 and 4 examples on two ranks)
#: and evaluation splits that do not split evenly either; SGD, whose update is linear in the
#: gradient (Adam divides by the root of tiny second moments, which turns rounding-level
#: differences of the gradient into visible ones within a few steps)
SMALL = [
    "trainer.optimizer=sgd",
    "trainer.lr=0.05",
    "task.n_train=201",
    "task.n_val=97",
    "task.n_test=95",
    "model.width=8",
    "model.rep_dim=32",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.device=cpu",
    "trainer.num_threads=1",
    "trainer.collective_timeout_s=60",
]
DDP = ["trainer.strategy=ddp", "trainer.devices=2"]

#: a baseline (a user's combiner, as `+combiner._target_` names one) that, on rank 1, is killed,
#: raises or stops answering at the global step the environment names
FAULTY = textwrap.dedent(
    """
    import os, signal, time
    import torch.distributed as dist
    from mtbench.combiners.baseline import Baseline

    class Faulty(Baseline):
        name = "faulty"
        ddp = "as the baseline (its own backward is the baseline's, with a fault injected)"
        steps = 0

        def backward(self, step):
            Faulty.steps += 1
            if step.group is not None and dist.get_rank() == 1 and str(Faulty.steps) == os.environ.get("FAULT_AT"):
                how = os.environ["FAULT"]
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if how == "raise":
                    raise RuntimeError("injected fault on rank 1")
                time.sleep(3600)  # stops answering
            super().backward(step)
    """
)


def _metrics(results: Path) -> dict:
    found = sorted(results.glob("**/seed=0/metrics.json"))
    assert len(found) == 1, found
    record = json.loads(found[0].read_text())
    history = found[0].parent / "history.csv"
    if history.exists():
        with open(history, newline="") as f:
            record["history"] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    model = found[0].parent / "model.pt"
    if model.exists():
        record["_weights"] = torch.load(model, weights_only=True)["state_dict"]
    return record


def _assert_same_numbers(one: dict, other: dict) -> None:
    """The reported metrics and every epoch's history row (up to floating-point reduction order)."""
    assert one["status"] == other["status"] == "completed"
    for split in ("val", "test"):
        assert other[split] == pytest.approx(one[split], rel=1e-6, abs=1e-9)
    assert other["best_epoch"] == one["best_epoch"]
    assert list(other["_weights"]) == list(one["_weights"])
    for key, value in one["_weights"].items():
        torch.testing.assert_close(other["_weights"][key], value, rtol=1e-5, atol=1e-6)
    assert len(other["history"]) == len(one["history"])
    for a, b in zip(one["history"], other["history"], strict=True):
        for key in a:
            if key != "train_step_s":
                assert b[key] == pytest.approx(a[key], rel=1e-5), key


# -- without processes -------------------------------------------------------------------------


@pytest.mark.parametrize("n,size", [(0, 2), (1, 2), (9, 2), (95, 2), (97, 4), (64, 3)])
def test_rank_slices_cover_every_item_once_in_order(n, size):
    parts = [rank_slice(n, r, size) for r in range(size)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_batch_that_does_not_split_is_one_line():
    tcfg = {"batch_size": 63, "strategy": "ddp", "devices": 2}
    with pytest.raises(MtbenchError, match=r"trainer.batch_size=63 does not split evenly over 2 processes.*62"):
        check_trainer(tcfg)
    check_trainer({"batch_size": 63, "strategy": "single", "devices": 2})  # one process: any batch
    with pytest.raises(MtbenchError, match="trainer.strategy='dp' is not allowed"):
        check_trainer({"strategy": "dp"})


def test_sync_batchnorm_outside_a_process_group_is_batchnorm():
    """The converted layer keeps the same tensors (and state_dict keys); alone it computes what
    nn.BatchNorm2d computes, running statistics included."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.load_state_dict(ref.state_dict())
    weight = model[1].weight
    model = convert_sync_batchnorm(model)
    assert isinstance(model[1], SyncBatchNorm) and model[1].weight is weight
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(6, 3, 8, 8)
    torch.testing.assert_close(model(x), ref(x))
    torch.testing.assert_close(model[1].running_var, ref[1].running_var)


# -- the CLI, two processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The single-process run of SMALL (the reference every DDP run must equal)."""
    cwd = tmp_path_factory.mktemp("single")
    proc = run_cli("mtbench", SMALL, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _metrics(cwd / "results")


@pytest.mark.slow
def test_cli_two_processes_equal_one(single, tmp_path):
    """``mtbench trainer.strategy=ddp trainer.devices=2``: one run folder (rank 0's files only),
    whose metrics and history equal the single-process run's (uneven last batch and evaluation
    splits, batch normalisation over the global batch)."""
    proc = run_cli("mtbench", [*SMALL, *DDP], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 processes (gloo)" in proc.stderr
    record = _metrics(tmp_path / "results")
    _assert_same_numbers(single, record)
    assert record["processes"] == 2
    folders = [p for p in (tmp_path / "results").glob("shapes40/runs/*/*/*") if p.is_dir()]
    assert len(folders) == 1  # the same folder as the single-process run's (strategy is not identity)
    assert folders[0].parent.name == single["variant"]
    assert sorted(p.name for p in folders[0].iterdir() if not p.name.startswith(".")) == sorted(
        ["history.csv", "metrics.json", "mtbench.log", "model.pt", "per_attribute.csv"]
    )


@pytest.mark.slow
def test_cli_batch_not_divisible_is_refused(tmp_path):
    args = [a for a in SMALL if not a.startswith("trainer.batch_size")] + ["trainer.batch_size=63", *DDP]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.batch_size=63 does not split evenly over 2 processes" in lines[0]
    assert not (tmp_path / "results").exists()


def _faulty_args() -> list[str]:
    return ["+combiner._target_=faulty.Faulty", "combiner.name=faulty", *SMALL, *DDP]


@pytest.mark.slow
def test_killed_rank_fails_the_run_and_the_rerun_resumes_exactly(single, tmp_path):
    """Rank 1 killed (SIGKILL) in epoch 2: the run fails with that reason at once (rank 0's next
    collective), its epoch-1 checkpoint kept; the same command again resumes and ends with the
    uninterrupted single-process run's numbers."""
    (tmp_path / "faulty.py").write_text(FAULTY)
    proc = run_cli("mtbench", _faulty_args(), cwd=tmp_path, env={"FAULT": "kill", "FAULT_AT": "6"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = _metrics(tmp_path / "results")
    assert failed["status"] == "failed" and "rank 1 was killed by SIGKILL" in failed["reason"]
    assert list((tmp_path / "results").glob("**/checkpoint.pt"))
    again = run_cli("mtbench", _faulty_args(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    _assert_same_numbers(single, _metrics(tmp_path / "results"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_failing_rank_fails_the_run_never_hangs(tmp_path, fault):
    """Rank 1 raising mid-step fails the run with rank 1's error; rank 1 that stops answering
    fails it once the collective timeout (here 8 s) has passed."""
    (tmp_path / "faulty.py").write_text(FAULTY)
    args = [a for a in _faulty_args() if not a.startswith("trainer.collective_timeout_s")]
    start = time.monotonic()
    proc = run_cli(
        "mtbench", [*args, "trainer.collective_timeout_s=8"], cwd=tmp_path, env={"FAULT": fault, "FAULT_AT": "2"}
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - start < 240
    record = _metrics(tmp_path / "results")
    assert record["status"] == "failed"
    if fault == "raise":
        assert "rank 1 failed: RuntimeError: injected fault on rank 1" in record["reason"]
    else:
        assert "rank 1 stopped answering" in record["reason"]


@pytest.mark.slow
def test_torchrun_joins_its_world_and_equals_one_process(single, tmp_path):
    """``torchrun --nproc-per-node 2 -m mtbench ... trainer.strategy=ddp``: the ranks come from
    the environment; rank 0 alone writes the run folder and the tables; the numbers are the
    single-process run's. The same command again: the completed run is skipped by every rank
    (rank 0 tells the other that there is nothing to train; no hang)."""
    from mtbench.train.distributed import _free_port

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launch += ["--master-port", str(_free_port()), "-m", "mtbench", *SMALL, "trainer.strategy=ddp"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Wrote table.md") + proc.stderr.count("Wrote table.md") == 1
    _assert_same_numbers(single, _metrics(tmp_path / "results"))
    again = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "already completed with this config, skipped" in again.stdout + again.stderr


@pytest.mark.parametrize("task", ["segmentation", "depth", "normal"])
def test_dense_losses_rescaled_by_valid_counts_average_to_the_global_loss(task):
    """A dense loss is a mean over the batch's valid pixels: scaled by N * n_r / n (``valid_counts``),
    the mean over N parts of the parts' losses is the whole batch's loss (``dense_loss``)."""
    from mtbench.data.dense import dense_loss, valid_counts

    g = torch.Generator().manual_seed(0)
    b, h, w = 5, 6, 7
    if task == "segmentation":
        pred = torch.randn(b, 4, h, w, generator=g)
        target = torch.randint(-1, 4, (b, h, w), generator=g)
        target[:2] = -1  # a part with fewer valid pixels than the other
    elif task == "depth":
        pred = torch.randn(b, 1, h, w, generator=g)
        target = torch.rand(b, 1, h, w, generator=g) * (torch.rand(b, 1, h, w, generator=g) > 0.3)
    else:
        pred = torch.randn(b, 3, h, w, generator=g)
        target = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        target = target * (torch.rand(b, 1, h, w, generator=g) > 0.4)
    whole = dense_loss(task, pred, target)
    parts = [rank_slice(b, r, 2) for r in range(2)]
    counts = [float(valid_counts(task, target[p])) for p in parts]
    total = sum(counts)
    assert total == float(valid_counts(task, target)) > 0
    scaled = [dense_loss(task, pred[p], target[p]) * 2 * c / total for p, c in zip(parts, counts, strict=True)]
    torch.testing.assert_close((scaled[0] + scaled[1]) / 2, whole)

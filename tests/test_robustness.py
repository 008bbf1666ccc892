"""Nothing lost: determinism, interruption and resumption, NaN, bad input, disk errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, cli_case, command, run_cli, run_dir, run_path

from mtbench.combiners import COMBINERS

FIXTURES = Path(__file__).parent / "fixtures"
#: long enough (4 epochs x 100 steps) to be interrupted mid-run, still a few seconds
LONGER = [o for o in TINY if not o.startswith(("task.n_train", "trainer.epochs", "trainer.batch_size"))] + [
    "task.n_train=3200",
    "trainer.epochs=4",
    "trainer.batch_size=32",
]
RUN = run_path(LONGER)  # the baseline's run folder, seed 0, of LONGER
RUN_TINY = run_path(TINY)


def numbers(run_dir: Path) -> dict:
    """What must be reproducible: the metrics and the per-epoch history, not the timings."""
    m = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv").drop(columns=["train_step_s"])
    return {"test": m["test"], "val": m["val"], "best_epoch": m["best_epoch"], "history": history.to_dict("list")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_cli("mtbench", LONGER, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / RUN


def test_same_seed_same_numbers(tmp_path, reference):
    proc = run_cli("mtbench", LONGER, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert numbers(tmp_path / RUN) == numbers(reference)
    assert not (tmp_path / RUN / "checkpoint.pt").exists(), "a completed run keeps no checkpoint"


def _start(cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        command("mtbench") + LONGER, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_killed_run_resumes_to_the_same_numbers(tmp_path, reference):
    proc = _start(tmp_path)
    _wait_for(tmp_path / RUN / "checkpoint.pt", proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    m = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert m["status"] == "running"
    again = run_cli("mtbench", LONGER, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert numbers(tmp_path / RUN) == numbers(reference)


def test_sigterm_checkpoints_marks_interrupted_and_resumes(tmp_path, reference):
    proc = _start(tmp_path)
    _wait_for(tmp_path / RUN / "history.csv", proc)  # epoch 1 done: now mid-epoch 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err
    m = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert m["status"] == "interrupted" and "SIGTERM" in m["reason"]
    assert (tmp_path / RUN / "checkpoint.pt").exists()
    again = run_cli("mtbench", LONGER, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert numbers(tmp_path / RUN) == numbers(reference)


#: 3 epochs of 2 steps: 64 examples, then 8 (a last batch of another shape)
SHORT = [o for o in TINY if not o.startswith(("task.n_train", "trainer.epochs"))] + [
    "task.n_train=72",
    "trainer.epochs=3",
]
#: single runs below skip the results table and plots (a second or so per process)
NO_TABLE = "~hydra.callbacks.tables"


def interrupt_at(step: int, sig: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`mtbench args` in a subprocess that gets ``sig`` right after its ``step``-th training step."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(FIXTURES / "interrupt_at.py"), str(step), sig, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory) -> Path:
    """Every combiner, uninterrupted, in one sweep: each run but the first follows others in its process."""
    cwd = tmp_path_factory.mktemp("sweep_reference")
    proc = run_cli("mtbench", ["-m", f"combiner={','.join(COMBINERS)}", *SHORT], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "results" / "shapes40"


@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_every_combiner_resumes_mid_epoch_to_the_same_numbers(tmp_path, sweep_reference, combiner):
    """SIGTERM after the first step: the run checkpoints mid-epoch; a new process resumes it (its
    first step is the smaller last batch) and ends with the uninterrupted run's exact numbers."""
    args = [*SHORT, f"combiner={combiner}", NO_TABLE]
    first = interrupt_at(1, "SIGTERM", args, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    run = run_dir(tmp_path / "results" / "shapes40", combiner)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and "at epoch 1, step 1" in m["reason"], m.get("reason")
    again = run_cli("mtbench", args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "(epoch 1, step 1)" in again.stderr
    assert numbers(run) == numbers(run_dir(sweep_reference, combiner))


def test_a_run_alone_has_the_numbers_it_has_late_in_a_sweep(tmp_path, sweep_reference):
    proc = run_cli("mtbench", [*SHORT, "combiner=gradnorm_graddrop", NO_TABLE], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = numbers(run_dir(tmp_path / "results" / "shapes40", "gradnorm_graddrop"))
    assert alone == numbers(run_dir(sweep_reference, "gradnorm_graddrop"))  # the sweep's 9th run


def test_num_threads_is_set_at_every_run_start(tmp_path, monkeypatch):
    """A run with trainer.num_threads=1 followed, in the same process, by one with null: the second
    runs with the process's default thread count, not the first run's setting."""
    import torch
    from hydra import compose, initialize_config_module

    from mtbench.train import loop, rng

    monkeypatch.setattr(rng, "_default_threads", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    try:
        with initialize_config_module("mtbench.configs", version_base="1.3"):
            for threads in ("1", "null"):
                cfg = compose("config", overrides=[*TINY, "trainer.epochs=1", f"trainer.num_threads={threads}"])
                loop.train(cfg, on_epoch=lambda history: seen.append(torch.get_num_threads()))
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_retain_freed_memory_keeps_large_blocks_for_the_next_allocation():
    """trainer.retain_freed_memory (mallopt): freed 16 MiB tensors stay in the heap, so the next
    ones fault in no fresh pages (beyond one block); off again (glibc's initial thresholds, the
    kept memory handed back), every 24 MiB tensor is mapped and faulted in anew (6144 pages
    each; a size that no chunk kept from before can serve, since malloc takes a free heap chunk
    of the right size whatever the thresholds). Measured by the process's minor page faults, in
    a fresh interpreter."""
    code = """
import resource, torch
from mtbench.train.device import retain_freed_memory

def faults(n):
    torch.ones(n)  # (one untimed allocation)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.ones(n)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert retain_freed_memory(False) is False  # (nothing set yet: nothing to restore)
assert retain_freed_memory(True) is True
kept = faults(4 << 20)  # 16 MiB
assert retain_freed_memory(False) is True
print(kept, faults(6 << 20))  # 24 MiB
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, fresh = map(int, proc.stdout.split())
    assert kept <= 2 * 4096 and fresh >= 9 * 6144, (kept, fresh)  # (at most one fresh block when kept)


cli_case(__name__, "retain_freed_memory=maybe", "mtbench", [*TINY, "trainer.retain_freed_memory=maybe"])


def test_retain_freed_memory_is_set_at_every_run_start(cli_runs, monkeypatch):
    """Like the thread count, every run sets trainer.retain_freed_memory for itself (true, then
    false in the same process: the second run restores glibc's thresholds); a value that is not
    a boolean is a one-line error."""
    from hydra import compose, initialize_config_module

    from mtbench.train import device, loop

    calls = []
    monkeypatch.setattr(
        loop, "retain_freed_memory", lambda enabled: calls.append(enabled) or device.retain_freed_memory(enabled)
    )
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        for value in ("true", "false"):
            cfg = compose("config", overrides=[*TINY, "trainer.epochs=1", f"trainer.retain_freed_memory={value}"])
            loop.train(cfg)
    assert calls == [True, False] and device._retaining is False
    bad = cli_runs[__name__, "retain_freed_memory=maybe"]
    assert bad.returncode == 2 and "trainer.retain_freed_memory" in bad.stderr.strip().splitlines()[-1]


def test_rerun_skips_completed_and_refuses_other_config(tmp_path):
    first = run_cli("mtbench", TINY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / RUN_TINY / "metrics.json").read_text()
    again = run_cli("mtbench", TINY, cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stderr
    # the metrics line of a skipped run says it is the earlier result, not a fresh one
    metric_lines = [line for line in again.stderr.splitlines() if "test error rate" in line]
    assert metric_lines and all(line.endswith("(skipped, completed earlier)") for line in metric_lines), again.stderr
    assert "(skipped, completed earlier)" not in first.stderr
    assert (tmp_path / RUN_TINY / "metrics.json").read_text() == before
    # another setting is another variant: its own folder, the first run untouched
    other = run_cli("mtbench", TINY + ["trainer.lr=0.01"], cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    assert (tmp_path / run_path(TINY + ["trainer.lr=0.01"]) / "metrics.json").is_file()
    assert (tmp_path / RUN_TINY / "metrics.json").read_text() == before
    # the same command line, but the folder's run had another resolved config (a changed default)
    m = json.loads(before)
    m["config"]["trainer"]["lr"] = 0.001
    (tmp_path / RUN_TINY / "metrics.json").write_text(json.dumps(m))
    changed = (tmp_path / RUN_TINY / "metrics.json").read_text()
    refused = run_cli("mtbench", TINY, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trainer.lr: 0.001 -> 0.003" in refused.stderr and "force=true" in refused.stderr
    assert (tmp_path / RUN_TINY / "metrics.json").read_text() == changed
    forced = run_cli("mtbench", TINY + ["force=true"], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert json.loads((tmp_path / RUN_TINY / "metrics.json").read_text())["config"]["trainer"]["lr"] == 0.003


def test_nan_fails_the_run_names_step_and_task_and_the_sweep_goes_on(tmp_path):
    args = ["-m", "combiner=baseline,nan_head", f"hydra.searchpath=[file://{FIXTURES / 'configs'}]", *TINY]
    env = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("mtbench", args, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    bad = json.loads((tmp_path / run_path(TINY, "nan_head") / "metrics.json").read_text())
    assert bad["status"] == "failed"
    assert "non-finite loss at epoch 1, step 2" in bad["reason"] and "gradient_background" in bad["reason"]
    good = json.loads((tmp_path / RUN_TINY / "metrics.json").read_text())
    assert good["status"] == "completed"
    table = (tmp_path / "results/shapes40/table.md").read_text()
    assert "| nan_head |" in table and "1 failed" in table


BAD_OPTIONS = [
    (["combiner=graddrop", "combiner.leak=[0.1,0.2]"], ["combiner.leak", "2 values", "40 tasks"]),
    (["combiner=graddrop", "combiner.leak=1.5"], ["combiner.leak", "[0, 1]"]),
    (["combiner=pcgrad", "+combiner.levle=params"], ["combiner.levle", "its options are"]),
    (["combiner=graddrop", "combiner.f=tanh"], ["combiner.f", "identity, linear, sigmoid"]),
    (["trainer.optimizer=rmsprop"], ["trainer.optimizer", "adam"]),
]
for _args, _ in BAD_OPTIONS:
    cli_case(__name__, tuple(_args), "mtbench", [*TINY, *_args])


@pytest.mark.parametrize("args, words", BAD_OPTIONS)
def test_bad_options_one_line_no_traceback(cli_runs, args, words):
    proc = cli_runs[__name__, tuple(args)]
    tmp_path = proc.cwd
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mtbench: error:")]
    for w in words:
        assert w in line, line
    for m in tmp_path.glob("results/**/metrics.json"):
        json.loads(m.read_text())  # never half-written


cli_case(
    __name__,
    "HYDRA_FULL_ERROR=1",
    "mtbench",
    [*TINY, "combiner=graddrop", "combiner.leak=1.5"],
    env={"HYDRA_FULL_ERROR": "1"},
)


def test_full_error_shows_the_traceback(cli_runs):
    proc = cli_runs[__name__, "HYDRA_FULL_ERROR=1"]
    assert proc.returncode != 0 and "Traceback" in proc.stderr


cli_case(
    __name__,
    "results_dir under a file",
    "mtbench",
    lambda folder: [*TINY, f"results_dir={folder / 'afile' / 'results'}"],
    setup=lambda folder: (folder / "afile").write_text("not a folder"),
)


def test_results_folder_not_writable(cli_runs):
    proc = cli_runs[__name__, "results_dir under a file"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "results_dir=" in proc.stderr and "is a file, not a folder" in proc.stderr


def test_disk_full_while_writing_results_loses_nothing(tmp_path, monkeypatch):
    """Simulated ENOSPC on the final metrics.json: the previous file stays whole, no temporary
    file is left, the error surfaces; a re-run after that completes from the checkpoint."""
    from hydra import compose, initialize_config_module

    import mtbench.report.runs as runs
    from mtbench.cli import run

    with initialize_config_module("mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=TINY)
    run_dir = tmp_path / "run"
    real_fsync = os.fsync

    def full_disk_on_final_metrics(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if (
            ".metrics.json." in name
            and (run_dir / "history.csv").exists()
            and len(pd.read_csv(run_dir / "history.csv")) == 2
        ):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", full_disk_on_final_metrics)
    with pytest.raises(OSError) as err:
        run(cfg, run_dir)
    assert err.value.errno == errno.ENOSPC
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"  # whole, the old content
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert (run_dir / "checkpoint.pt").exists()
    monkeypatch.setattr(runs.os, "fsync", real_fsync)
    record = run(cfg, run_dir)
    assert record["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_table_tolerates_running_and_corrupt_runs(tmp_path):
    proc = run_cli("mtbench", ["-m", "combiner=baseline,clip", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "results/shapes40/runs"
    (runs / "graddrop/seed=0").mkdir(parents=True)
    (runs / "graddrop/seed=0/metrics.json").write_text(
        json.dumps({"status": "running", "combiner": "graddrop", "seed": 0})
    )
    (runs / "pcgrad/seed=0").mkdir(parents=True)
    (runs / "pcgrad/seed=0/metrics.json").write_text('{"status": "compl')  # cut off
    table = run_cli("mtbench-table", [str(tmp_path / "results/shapes40")], cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "pcgrad/seed=0/metrics.json" in table.stderr  # the skipped file is named
    assert "1 run(s) still in progress" in table.stdout
    md = (tmp_path / "results/shapes40/table.md").read_text()
    assert "| baseline |" in md and "| clip |" in md and "graddrop" not in md and "pcgrad" not in md

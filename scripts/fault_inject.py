#!/usr/bin/env python
"""Fault injection against the real ``mtbench`` command, on a tiny shapes40 config.

    python scripts/fault_inject.py --out docs/results/reliability/fault_inject.json
    python scripts/fault_inject.py --quick              # one case of each kind (about a minute)
    python scripts/fault_inject.py --random 20 --seed 7 # more signals at random moments
    python scripts/fault_inject.py --cases sigterm@test,duplicate_sweep_x2
    python scripts/fault_inject.py --list

Each case disturbs one run (or sweep) in a fresh folder and checks what must hold afterwards:

- ``<signal>@<moment>``: SIGTERM, SIGINT or SIGKILL at a chosen moment (``setup``: before
  the first step; ``first_step``: the run is about to take its first step; ``mid_run``: just
  after the first epoch's checkpoint; ``test``: during the final test evaluation; the
  moments are reached through ``mtbench.train.loop.pause_point``). SIGTERM/SIGINT: the
  process exits 128 + the signal with no traceback, ``metrics.json`` says ``interrupted`` (or
  ``completed``) and no lock is left. Every signal: the same command run again exits 0 and the
  run ends with exactly the numbers of an undisturbed run (metrics, history, per-attribute
  file), its folder consistent (one history row per epoch, the best epoch's row holds
  ``metrics.json``'s validation numbers, no checkpoint, no lock).
- ``random<k>``: a random signal at a random moment of the run (from the process start to
  its end); the SIGTERM/SIGINT checks apply when the run had started (its lock existed).
- ``second_sigint``: two Ctrl-C: exit 130 at once, last line
  ``mtbench: interrupted again, stopping now``, no traceback; then as above.
- ``duplicate_sweep_x2`` / ``duplicate_sweep_x3``: the same sweep started 2 or 3 times at
  once: every process exits 0, every run is trained once, ends with the undisturbed numbers
  and is consistent.
- ``corrupt_*``: a truncated, garbage or non-object ``metrics.json``, a truncated checkpoint,
  flipped bytes inside a checkpoint, a garbage lock, stale temporary files: the re-run either
  ends with the undisturbed numbers or stops with exit 2 and one ``mtbench: error:`` line
  (never other numbers, never a traceback); a file where the results folder or a combiner's
  folder belongs: exit 2 with one line, the file untouched.
- ``malicious_*``: a crafted pickle whose loading would create a marker file, as the
  checkpoint of a stopped run (a raw pickle, a torch zip file, torch's legacy format, one
  behind a valid checksum header), as a fresh run folder's checkpoint, as ``model.pt`` for
  ``mtbench-eval``, and a ``metrics.json`` naming a builder (``model._target_``): exit 2 with
  one line naming the file, and the marker never appears.
- ``foreign_*``: another seed's or another combiner's checkpoint, or the run's own with its
  epoch rewritten, all with valid checksums: exit 2 with one line naming the checkpoint.
- ``damaged_*``: ``mtbench-eval`` on a garbage, list-shaped or config-less ``metrics.json``, an
  empty or truncated ``model.pt``, a batch size of 0; ``mtbench-table`` with an empty, binary
  or wrongly shaped paper CSV; ``name=../../outside``; a results folder under ``/proc``: exit 2
  with one line, no traceback, nothing written outside the results folder.
- ``order_*``: a run's numbers do not depend on the runs before it in the same process.
- ``badopt_*``: a bad option value or a typo in a name: exit 2, exactly one ``mtbench: error:`` line, no
  traceback, no ``metrics.json`` left.

Prints a table (case, held, details) and writes the results as JSON (``--out``). Exits 1 when
a case did not hold.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the run every case disturbs: 3 epochs of 20 steps, a few seconds on one CPU thread
CONFIG = [
    "task.n_train=640",
    "task.n_val=96",
    "task.n_test=96",
    "model.width=8",
    "model.rep_dim=32",
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.device=cpu",
    "trainer.num_threads=1",
]
SWEEP = "results/shapes40"
AGAIN = "mtbench: interrupted again, stopping now"
SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}
MOMENTS = ("setup", "first_step", "mid_run", "test")
PAUSE = {"setup": "setup", "first_step": "steps", "test": "test"}

#: (case name, overrides): each must exit 2 with one line
BAD_OPTIONS = [
    ("epochs_zero", ["trainer.epochs=0"]),
    ("lr_negative", ["trainer.lr=-1"]),
    ("batch_size_text", ["trainer.batch_size=abc"]),
    ("seed_text", ["seed=x"]),
    ("device_unknown", ["trainer.device=tpu"]),
    ("amp_fp16", ["trainer.amp=fp16"]),
    ("select_metric", ["trainer.select_metric=accuracy"]),
    ("optimizer", ["trainer.optimizer=rmsprop"]),
    ("leak_range", ["combiner=graddrop", "combiner.leak=1.5"]),
    ("leak_length", ["combiner=graddrop", "combiner.leak=[0.1,0.2]"]),
    ("combiner_option_typo", ["combiner=pcgrad", "+combiner.levle=params"]),
    ("model_width_negative", ["model.width=-3"]),
    ("n_train_zero", ["task.n_train=0"]),
    ("combiner_unknown", ["combiner=nosuch"]),
    # values a looser check would let through to a failed run (exit 1) or accept silently
    ("weight_decay_negative", ["trainer.weight_decay=-1"]),
    ("weight_decay_text", ["trainer.weight_decay=abc"]),
    ("weight_decay_nan", ["trainer.weight_decay=nan"]),
    ("momentum_negative", ["trainer.optimizer=sgd", "trainer.momentum=-0.5"]),
    ("step_size_zero", ["trainer.scheduler=step", "trainer.step_size=0"]),
    ("step_size_negative", ["trainer.scheduler=step", "trainer.step_size=-1"]),
    ("gamma_nan", ["trainer.gamma=nan"]),
    ("gamma_negative", ["trainer.gamma=-1"]),
    ("num_threads_negative", ["trainer.num_threads=-1"]),
    ("num_threads_zero", ["trainer.num_threads=0"]),
    ("device_mps", ["trainer.device=mps"]),
    ("lr_inf", ["trainer.lr=inf"]),
    ("seed_bool", ["seed=true"]),
    ("lambda_inf", ["combiner=gradpenalty", "combiner.lambda=inf"]),
    ("alpha_text", ["combiner=gradnorm", "combiner.alpha=abc"]),
    ("alpha_nan", ["combiner=gradnorm", "combiner.alpha=nan"]),
    ("k_nan", ["combiner=graddrop", "combiner.f=linear", "combiner.k=nan"]),
    ("k_inf", ["combiner=graddrop", "combiner.f=sigmoid", "combiner.k=inf"]),
    ("chunk_size_fraction", ["combiner=mgda", "combiner.level=params", "combiner.chunk_size=0.5"]),
    ("n_train_text", ["task.n_train=abc"]),
    ("image_size_small", ["task.image_size=8"]),
    # typos: the closest valid name, exit 2
    ("typo_combiner", ["combiner=gradrop"]),
    ("typo_model", ["model=resnet"]),
    ("typo_experiment", ["experiment=paper_celeb"]),
    ("typo_combiner_key", ["combiner=graddrop", "combiner.lek=0.5"]),
    ("typo_trainer_key", ["trainer.epocs=2"]),
    ("typo_plus_key", ["+trainer.epocs=2"]),
]


def mtbench_command() -> list[str]:
    script = Path(sys.executable).parent / "mtbench"
    if script.exists():
        return [str(script)]
    found = shutil.which("mtbench")
    return [found] if found else [sys.executable, "-m", "mtbench"]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MTBENCH_PAUSE_AT")}
    out.update(extra)
    return out


def start(cwd: Path, args: list[str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        mtbench_command() + args,
        cwd=cwd,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def run(cwd: Path, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        mtbench_command() + args,
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_folder(cwd: Path, combiner: str = "baseline", seed: int = 0) -> Path:
    """The run's folder, in either layout (``runs/<c>/<variant>/seed=N`` or ``runs/<c>/seed=N``)."""
    base = cwd / SWEEP / "runs" / combiner
    found = sorted(p for p in base.glob(f"*/seed={seed}") if p.is_dir())  # one command line: one variant
    old = base / f"seed={seed}"
    return found[0] if found else (old if old.exists() else base / "default" / f"seed={seed}")


def numbers(folder: Path) -> dict[str, Any]:
    """What must be reproducible: metrics, history (timings aside), the per-attribute file."""
    m = json.loads((folder / "metrics.json").read_text())
    with open(folder / "history.csv", newline="") as f:
        history = [{k: v for k, v in row.items() if k != "train_step_s"} for row in csv.DictReader(f)]
    per_attr = (folder / "per_attribute.csv").read_text() if (folder / "per_attribute.csv").exists() else None
    return {
        "test": m.get("test"),
        "val": m.get("val"),
        "best_epoch": m.get("best_epoch"),
        "history": history,
        "per_attribute": per_attr,
    }


def consistency(folder: Path) -> list[str]:
    """What is wrong with a completed run's folder (nothing: [])."""
    problems = []
    try:
        m = json.loads((folder / "metrics.json").read_text())
        with open(folder / "history.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        return [f"unreadable: {e}"]
    if m.get("status") != "completed":
        return [f"status {m.get('status')}"]
    if [int(r["epoch"]) for r in rows] != list(range(1, int(m["epochs"]) + 1)):
        problems.append(f"history epochs {[r['epoch'] for r in rows]}")
    best = [r for r in rows if int(r["epoch"]) == m.get("best_epoch")]
    if not best or any(abs(float(best[0][f"val_{k}"]) - v) > 1e-9 for k, v in m["val"].items()):
        problems.append("best epoch's history row differs from metrics.json's val")
    for name in ("checkpoint.pt", ".lock"):
        if (folder / name).exists():
            problems.append(f"{name} left")
    return problems


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen | None, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while not predicate():
        if (proc is not None and proc.poll() is not None) or time.time() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int | None, str]:
    """Exit code and stderr; None when the process had to be killed (it hung)."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err


class Case:
    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.problems: list[str] = []
        self.details: dict[str, Any] = {}

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


class Injector:
    def __init__(self, workdir: Path, rng: random.Random):
        self.workdir = workdir
        self.rng = rng
        self.refs: dict[str, dict[str, Any]] = {}
        self.ref_wall_s = 10.0

    def fresh(self, name: str) -> Path:
        cwd = self.workdir / name
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir(parents=True)
        return cwd

    def reference(self) -> None:
        """Undisturbed runs of baseline and clip (one sweep): the numbers every case must reach."""
        cwd = self.fresh("reference")
        t0 = time.time()
        proc = run(cwd, CONFIG)
        self.ref_wall_s = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the undisturbed reference run failed:\n{proc.stderr[-3000:]}")
        self.refs["baseline"] = numbers(run_folder(cwd))
        proc = run(cwd, [*CONFIG, "combiner=clip"])
        if proc.returncode != 0:
            raise SystemExit(f"the undisturbed reference run failed:\n{proc.stderr[-3000:]}")
        self.refs["clip"] = numbers(run_folder(cwd, "clip"))

    # -- common checks ---------------------------------------------------------------------
    def rerun_matches(self, case: Case, cwd: Path, combiner: str = "baseline", args: list[str] | None = None) -> None:
        again = run(cwd, args or CONFIG)
        if not case.check(again.returncode == 0, f"re-run exit {again.returncode}: {last_line(again.stderr)}"):
            return
        folder = run_folder(cwd, combiner)
        for p in consistency(folder):
            case.check(False, f"re-run folder: {p}")
        if not case.problems:
            case.check(numbers(folder) == self.refs[combiner], "re-run numbers differ from the undisturbed run")

    def after_signal(self, case: Case, sig: int, code: int | None, err: str, started: bool, cwd: Path) -> None:
        case.details.update(exit=code)
        if not case.check(code is not None, "the process did not exit within 60 s of the signal"):
            return
        if sig == signal.SIGKILL or not started:
            return
        case.check(code in (128 + sig, 0), f"exit {code}, expected {128 + sig}")
        case.check("Traceback" not in err, "traceback on stderr")
        folder = run_folder(cwd)
        try:
            status = json.loads((folder / "metrics.json").read_text()).get("status")
        except (OSError, ValueError):
            status = None
        case.details.update(status=status)
        case.check(status in ("interrupted", "completed"), f"status {status!r} after the signal")
        case.check(not (folder / ".lock").exists(), "lock left behind")

    # -- the cases -------------------------------------------------------------------------
    def signal_at(self, case: Case, sig: int, moment: str) -> None:
        cwd = self.fresh(case.name)
        if moment in PAUSE:
            marker = cwd / "paused"
            proc = start(
                cwd, CONFIG, MTBENCH_PAUSE_AT=PAUSE[moment], MTBENCH_PAUSE_MARKER=str(marker), MTBENCH_PAUSE_S="60"
            )
            reached = wait_for(marker.exists, proc)
        else:  # mid_run: right after the first epoch's checkpoint
            marker = None
            proc = start(cwd, CONFIG)
            reached = wait_for(lambda: (run_folder(cwd) / "checkpoint.pt").exists(), proc)
        if not case.check(reached, f"the run never reached {moment}"):
            finish(proc)
            return
        proc.send_signal(sig)
        if marker is not None:
            time.sleep(0.2)
            marker.unlink(missing_ok=True)
        code, err = finish(proc)
        self.after_signal(case, sig, code, err, True, cwd)
        self.rerun_matches(case, cwd)

    def signal_random(self, case: Case) -> None:
        cwd = self.fresh(case.name)
        name = self.rng.choice(sorted(SIGNALS))
        sig = SIGNALS[name]
        delay = self.rng.uniform(0.0, self.ref_wall_s)
        proc = start(cwd, CONFIG)
        time.sleep(delay)
        started = (run_folder(cwd) / ".lock").exists()
        alive = proc.poll() is None
        if alive:
            proc.send_signal(sig)
        case.details.update(signal=name, delay_s=round(delay, 2), run_started=started, before_exit=alive)
        code, err = finish(proc)
        self.after_signal(case, sig, code, err, started and alive, cwd)
        self.rerun_matches(case, cwd)

    def second_sigint(self, case: Case) -> None:
        cwd = self.fresh(case.name)
        marker = cwd / "paused"
        proc = start(cwd, CONFIG, MTBENCH_PAUSE_AT="steps", MTBENCH_PAUSE_MARKER=str(marker), MTBENCH_PAUSE_S="60")
        if not case.check(wait_for(marker.exists, proc), "the run never reached its first step"):
            finish(proc)
            return
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        code, err = finish(proc)
        case.details.update(exit=code, stop_s=round(time.time() - t0, 2))
        case.check(code == 130, f"exit {code}, expected 130")
        case.check("Traceback" not in err, "traceback on stderr")
        lines = err.strip().splitlines()
        case.check(bool(lines) and lines[-1] == AGAIN, f"last line {lines[-1] if lines else ''!r}")
        self.rerun_matches(case, cwd)

    def duplicate_sweep(self, case: Case, copies: int) -> None:
        cwd = self.fresh(case.name)
        args = ["-m", "combiner=baseline,clip", *CONFIG]
        procs = []
        for i in range(copies):
            procs.append(start(cwd, args))
            if i and copies > 2:
                time.sleep(self.rng.uniform(0.0, 1.5))  # staggered
        results = [finish(p, timeout=600) for p in procs]
        case.details.update(exits=[c for c, _ in results])
        # 0, or 3 (HELD) for a copy that skipped runs another copy held, saying so
        case.check(all(c in (0, 3) for c, _ in results), f"exit codes {[c for c, _ in results]}")
        for code, err in results:
            case.check((code == 3) == ("owned by another mtbench process" in err), f"exit {code} without its line")
        for combiner in ("baseline", "clip"):
            trained = sum(f"{combiner} seed=0 epoch 3/3" in err for _, err in results)
            case.check(trained == 1, f"{combiner} trained {trained} times")
            folder = run_folder(cwd, combiner)
            for p in consistency(folder):
                case.check(False, f"{combiner}: {p}")
            if folder.exists() and not consistency(folder):
                case.check(
                    numbers(folder) == self.refs[combiner], f"{combiner}: numbers differ from the undisturbed run"
                )
        skipped = sum(err.count("skipped") for _, err in results)
        case.details.update(skip_lines=skipped)

    def _killed_mid_run(self, cwd: Path, extra: list[str] | None = None) -> bool:
        proc = start(cwd, [*CONFIG, *(extra or [])])
        combiner = next((a.split("=", 1)[1] for a in extra or [] if a.startswith("combiner=")), "baseline")
        seed = int(next((a.split("=", 1)[1] for a in extra or [] if a.startswith("seed=")), 0))
        ok = wait_for(lambda: (run_folder(cwd, combiner, seed) / "checkpoint.pt").exists(), proc)
        proc.kill()
        proc.wait()
        return ok

    def corrupt(self, case: Case, what: str) -> None:
        cwd = self.fresh(case.name)
        if what in ("metrics_truncated_completed", "metrics_not_an_object"):
            proc = run(cwd, CONFIG)
            if not case.check(proc.returncode == 0, "the first run failed"):
                return
            path = run_folder(cwd) / "metrics.json"
            if what == "metrics_not_an_object":
                path.write_text("[1, 2, 3]")
            else:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif what in ("results_folder_is_a_file", "combiner_folder_is_a_file"):
            blocked = cwd / SWEEP / ("runs/baseline" if what == "combiner_folder_is_a_file" else "")
            blocked.parent.mkdir(parents=True, exist_ok=True)
            blocked.write_text("not a folder")
            again = run(cwd, CONFIG)
            errors = [x for x in again.stderr.splitlines() if x.startswith("mtbench: error:")]
            case.details.update(exit=again.returncode, error=errors[0] if errors else last_line(again.stderr))
            case.check(again.returncode == 2, f"exit {again.returncode}")
            case.check(len(errors) == 1 and "Traceback" not in again.stderr, "no single clean error line")
            case.check(blocked.read_text() == "not a folder", "the file was changed")
            return
        else:
            if not case.check(self._killed_mid_run(cwd), "the run never checkpointed"):
                return
            folder = run_folder(cwd)
            if what == "metrics_garbage_running":
                (folder / "metrics.json").write_bytes(os.urandom(200))
            elif what == "checkpoint_truncated":
                ck = folder / "checkpoint.pt"
                ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
            elif what == "checkpoint_flipped_bytes":
                ck = folder / "checkpoint.pt"
                data = bytearray(ck.read_bytes())
                for i in self.rng.sample(range(len(data) // 4, 3 * len(data) // 4), 16):
                    data[i] ^= 0xFF
                ck.write_bytes(bytes(data))
            elif what == "lock_garbage_old":
                lock = folder / ".lock"
                lock.write_bytes(b"\x00garbage")
                old = time.time() - 3600
                os.utime(lock, (old, old))
            elif what == "lock_other_host_old":
                lock = folder / ".lock"
                lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x", "token": "t"}))
                old = time.time() - 3600
                os.utime(lock, (old, old))
            elif what == "stale_tmp_files":
                (folder / ".metrics.json.abc123.tmp").write_text('{"status": "compl')
                (folder / ".checkpoint.pt.99999.tmp").write_bytes(b"PK\x03\x04 half")
        again = run(cwd, CONFIG)
        case.details.update(exit=again.returncode)
        if again.returncode == 2:
            errors = [x for x in again.stderr.splitlines() if x.startswith("mtbench: error:")]
            case.check(len(errors) == 1 and "Traceback" not in again.stderr, "exit 2 without one clean error line")
            case.details.update(error=errors[0] if errors else last_line(again.stderr))
            return
        case.check(again.returncode == 0, f"re-run exit {again.returncode}: {last_line(again.stderr)}")
        if case.problems:
            return
        folder = run_folder(cwd)
        for p in consistency(folder):
            case.check(False, p)
        if not case.problems:
            case.check(
                numbers(folder) == self.refs["baseline"], "completed with other numbers than the undisturbed run"
            )

    # -- files from elsewhere ----------------------------------------------------------------
    def one_line(self, case: Case, proc: subprocess.CompletedProcess, names: str, prefix: str = "mtbench") -> None:
        """Exit 2, one ``<prefix>: error:`` line that contains ``names``, no traceback."""
        errors = [x for x in proc.stderr.splitlines() if x.startswith(f"{prefix}: error:")]
        case.details.update(exit=proc.returncode, error=errors[0] if errors else last_line(proc.stderr))
        case.check(proc.returncode == 2, f"exit {proc.returncode}")
        case.check("Traceback" not in proc.stderr, "traceback on stderr")
        case.check(len(errors) == 1 and names in errors[0], f"no single error line naming {names}")

    def completed_run(self, case: Case, cwd: Path) -> Path | None:
        proc = run(cwd, CONFIG)
        return run_folder(cwd) if case.check(proc.returncode == 0, "the first run failed") else None

    def malicious(self, case: Case, what: str) -> None:
        cwd = self.fresh(case.name)
        marker = cwd / "MARKER"
        payload = _crafted(marker, what.split("_", 1)[1] if what.startswith(("checkpoint_", "model_")) else "zip")
        if what.startswith("checkpoint_"):
            if not case.check(self._killed_mid_run(cwd), "the run never checkpointed"):
                return
            (run_folder(cwd) / "checkpoint.pt").write_bytes(payload)
            self.one_line(case, run(cwd, CONFIG), "checkpoint.pt")
        elif what == "fresh_folder":
            probe = self.fresh(case.name + "_probe")  # where this config's run folder is
            if not case.check(self._killed_mid_run(probe), "the run never checkpointed"):
                return
            folder = cwd / run_folder(probe).relative_to(probe)
            folder.mkdir(parents=True)
            (folder / "checkpoint.pt").write_bytes(payload)
            self.one_line(case, run(cwd, CONFIG), "checkpoint.pt")
        else:
            folder = self.completed_run(case, cwd)
            if folder is None:
                return
            if what.startswith("model_"):
                (folder / "model.pt").write_bytes(payload)
                names = "model.pt"
            else:  # metrics.json names a builder
                record = json.loads((folder / "metrics.json").read_text())
                record["config"]["model"] = {
                    "name": "small_cnn",
                    "_target_": "builtins.open",
                    "file": str(marker),
                    "mode": "w",
                }
                (folder / "metrics.json").write_text(json.dumps(record))
                names = "_target_"
            self.one_line(case, run_tool("mtbench-eval", cwd, [str(folder)]), names)
        case.check(not marker.exists(), "the payload ran: the marker file exists")

    def foreign(self, case: Case, what: str) -> None:
        cwd = self.fresh(case.name)
        if not case.check(self._killed_mid_run(cwd), "the run never checkpointed"):
            return
        path = run_folder(cwd) / "checkpoint.pt"
        if what == "epoch_rewritten":
            from mtbench.train import checkpoint

            payload = checkpoint.load(path)
            payload["state"]["epoch"] += 1
            checkpoint.save(payload, path)  # a valid checksum
        else:
            other = self.fresh(case.name + "_other")
            extra = ["seed=1"] if what == "seed" else ["combiner=clip"]
            if not case.check(self._killed_mid_run(other, extra), "the other run never checkpointed"):
                return
            shutil.copy(
                run_folder(other, "clip" if what == "combiner" else "baseline", 1 if what == "seed" else 0)
                / "checkpoint.pt",
                path,
            )
        self.one_line(case, run(cwd, CONFIG), "checkpoint.pt")

    def damaged(self, case: Case, what: str) -> None:
        cwd = self.fresh(case.name)
        if what == "name_escape":
            self.one_line(case, run(cwd, [*CONFIG, "name=../../outside"]), "name=../../outside")
            case.check(not (cwd.parent.parent / "outside").exists(), "a folder was written outside results_dir")
            return
        if what == "results_proc":
            self.one_line(case, run(cwd, [*CONFIG, "results_dir=/proc/mtbench"]), "/proc/mtbench")
            return
        folder = self.completed_run(case, cwd)
        if folder is None:
            return
        metrics, model = folder / "metrics.json", folder / "model.pt"
        if what.startswith("table_paper_"):
            paper = cwd / "paper.csv"
            paper.write_bytes({"empty": b"", "binary": bytes(range(256)) * 4, "shape": b'a,b\n1,2,3\n"x\n'}[what[12:]])
            proc = run_tool("mtbench-table", cwd, [SWEEP, "--no-plots", "--paper", str(paper)])
            self.one_line(case, proc, "paper.csv", prefix="mtbench-table")
            return
        args = [str(folder)]
        if what == "eval_metrics_garbage":
            metrics.write_bytes(os.urandom(300))
        elif what == "eval_metrics_list":
            metrics.write_text("[1, 2]")
        elif what == "eval_metrics_no_config":
            record = json.loads(metrics.read_text())
            record.pop("config")
            metrics.write_text(json.dumps(record))
        elif what == "eval_model_empty":
            model.write_bytes(b"")
        elif what == "eval_model_truncated":
            model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        elif what == "eval_batch_zero":
            args += ["--batch-size", "0"]
        names = "model.pt" if "model" in what else ("--batch-size" if "batch" in what else "metrics.json")
        self.one_line(case, run_tool("mtbench-eval", cwd, args), names)

    def order(self, case: Case) -> None:
        cwd = self.fresh(case.name)
        proc = run(cwd, ["-m", "combiner=clip,baseline", *CONFIG])
        if not case.check(proc.returncode == 0, f"sweep exit {proc.returncode}: {last_line(proc.stderr)}"):
            return
        for combiner in ("baseline", "clip"):
            case.check(
                numbers(run_folder(cwd, combiner)) == self.refs[combiner],
                f"{combiner} in a sweep differs from its single run",
            )

    def bad_option(self, case: Case, overrides: list[str]) -> None:
        cwd = self.fresh(case.name)
        proc = run(cwd, [*CONFIG, *overrides])
        errors = [x for x in proc.stderr.splitlines() if x.startswith("mtbench: error:")]
        case.details.update(exit=proc.returncode, line=errors[0] if len(errors) == 1 else last_line(proc.stderr))
        case.check(proc.returncode == 2, f"exit {proc.returncode}")
        case.check("Traceback" not in proc.stderr, "traceback on stderr")
        case.check(len(errors) == 1, f"{len(errors)} 'mtbench: error:' lines")
        case.check(not list(cwd.glob("results/**/metrics.json")), "a metrics.json was left")


def run_tool(name: str, cwd: Path, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``mtbench-eval`` or ``mtbench-table`` (the console script next to this interpreter)."""
    script = Path(sys.executable).parent / name
    command = [str(script)] if script.exists() else [shutil.which(name) or name]
    return subprocess.run(
        command + args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


class _Payload:
    """Unpickling it creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(marker: Path, kind: str) -> bytes:
    """A malicious file: ``raw`` pickle, torch ``zip``, torch ``legacy`` format, or ``header``
    (a torch zip behind a valid mtbench checksum header)."""
    import hashlib
    import io
    import pickle

    import torch

    if kind == "raw":
        return pickle.dumps({"state": _Payload(marker)})
    buf = io.BytesIO()
    torch.save({"state": _Payload(marker)}, buf, _use_new_zipfile_serialization=kind != "legacy")
    body = buf.getvalue()
    if kind == "header":
        from mtbench.train.checkpoint import MAGIC

        return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    return body


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def all_cases(inj: Injector, n_random: int) -> list[tuple[str, str, Callable[[Case], None]]]:
    cases: list[tuple[str, str, Callable[[Case], None]]] = []
    for sname, sig in SIGNALS.items():
        for moment in MOMENTS:
            cases.append((f"{sname}@{moment}", "signal", lambda c, s=sig, m=moment: inj.signal_at(c, s, m)))
    cases.append(("second_sigint", "signal", inj.second_sigint))
    for k in range(n_random):
        cases.append((f"random{k}", "signal (random)", inj.signal_random))
    cases.append(("duplicate_sweep_x2", "duplicate sweeps", lambda c: inj.duplicate_sweep(c, 2)))
    cases.append(("duplicate_sweep_x3", "duplicate sweeps", lambda c: inj.duplicate_sweep(c, 3)))
    for what in ("metrics_truncated_completed", "metrics_not_an_object", "metrics_garbage_running", "checkpoint_truncated", "checkpoint_flipped_bytes", "lock_garbage_old", "lock_other_host_old", "stale_tmp_files",
                 "results_folder_is_a_file", "combiner_folder_is_a_file"):  # fmt: skip
        cases.append((f"corrupt_{what}", "corrupted files", lambda c, w=what: inj.corrupt(c, w)))
    for what in ("checkpoint_raw", "checkpoint_zip", "checkpoint_legacy", "checkpoint_header", "fresh_folder", "model_raw", "model_zip", "model_legacy", "metrics_target"):  # fmt: skip
        cases.append((f"malicious_{what}", "malicious files", lambda c, w=what: inj.malicious(c, w)))
    for what in ("seed", "combiner", "epoch_rewritten"):
        cases.append((f"foreign_{what}", "foreign files", lambda c, w=what: inj.foreign(c, w)))
    for what in ("eval_metrics_garbage", "eval_metrics_list", "eval_metrics_no_config", "eval_model_empty", "eval_model_truncated", "eval_batch_zero",
                 "table_paper_empty", "table_paper_binary", "table_paper_shape", "name_escape", "results_proc"):  # fmt: skip
        cases.append((f"damaged_{what}", "damaged inputs", lambda c, w=what: inj.damaged(c, w)))
    cases.append(("order_sweep_vs_single", "order", inj.order))
    for name, overrides in BAD_OPTIONS:
        cases.append((f"badopt_{name}", "bad option", lambda c, o=overrides: inj.bad_option(c, o)))
    return cases


QUICK = [
    "sigterm@test",
    "sigkill@mid_run",
    "second_sigint",
    "duplicate_sweep_x2",
    "corrupt_metrics_truncated_completed",
    "badopt_lr_negative",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", default="docs/results/reliability/fault_inject.json", help="JSON results (default: %(default)s)"
    )
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--cases", help="comma-separated case names (see --list)")
    ap.add_argument("--random", type=int, default=24, help="signals at random moments (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random moments and bytes (default: %(default)s)")
    ap.add_argument("--workdir", help="where the cases run (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mtbench-faults-"))
    inj = Injector(workdir, random.Random(args.seed))
    cases = all_cases(inj, args.random)
    if args.list:
        print("\n".join(name for name, _, _ in cases))
        return 0
    wanted = QUICK if args.quick else (args.cases.split(",") if args.cases else None)
    if wanted is not None:
        unknown = set(wanted) - {n for n, _, _ in cases}
        if unknown:
            ap.error(f"unknown case(s): {', '.join(sorted(unknown))}; see --list")
        cases = [c for c in cases if c[0] in wanted]

    t_start = time.time()
    inj.reference()
    print(f"undisturbed run: {inj.ref_wall_s:.1f} s; {len(cases)} case(s) in {workdir}", file=sys.stderr)
    done: list[dict[str, Any]] = []
    for name, kind, fn in cases:
        case = Case(name, kind)
        t0 = time.time()
        try:
            fn(case)
        except Exception as e:  # noqa: BLE001 - a broken case is a case that did not hold
            case.problems.append(f"{type(e).__name__}: {e}")
        entry = {
            "case": name,
            "kind": kind,
            "held": not case.problems,
            "problems": case.problems,
            "details": case.details,
            "seconds": round(time.time() - t0, 1),
        }
        done.append(entry)
        print(
            f"{'held' if entry['held'] else 'FAILED':6} {name:40} {entry['seconds']:6.1f} s  {'; '.join(case.problems)}",
            file=sys.stderr,
        )

    kinds = list(dict.fromkeys(d["kind"] for d in done))
    summary = {
        k: {"tried": sum(d["kind"] == k for d in done), "held": sum(d["kind"] == k and d["held"] for d in done)}
        for k in kinds
    }
    total = {"tried": len(done), "held": sum(d["held"] for d in done)}
    print("\n| kind | tried | held |\n|---|---|---|")
    for k, s in summary.items():
        print(f"| {k} | {s['tried']} | {s['held']} |")
    print(f"| **all** | **{total['tried']}** | **{total['held']}** |")
    failed = [d for d in done if not d["held"]]
    if failed:
        print("\nnot held:")
        for d in failed:
            print(f"- {d['case']}: {'; '.join(d['problems'])}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python", "scripts/fault_inject.py", *(argv if argv is not None else sys.argv[1:])]),
        "host": socket.gethostname(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": args.seed,
        "config": CONFIG,
        "undisturbed_run_s": round(inj.ref_wall_s, 2),
        "wall_s": round(time.time() - t_start, 1),
        "summary": summary,
        "total": total,
        "cases": done,
    }
    from mtbench.files import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}", file=sys.stderr)
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

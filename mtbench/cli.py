"""The ``mtbench`` command: a Hydra application that trains one run per job.

    mtbench task=shapes40 combiner=baseline seed=3 trainer.epochs=2 trainer.device=cpu
    mtbench -m                      # every combiner (the primary config's hydra.sweeper.params)
    mtbench -m seed=0,1,2

Each run writes ``metrics.json`` (status ``running`` while it trains, then ``completed``,
``interrupted``, or ``failed`` with a ``reason``), ``history.csv``, ``per_attribute.csv`` and,
until it completes, ``checkpoint.pt`` into ``results/<name>/runs/<combiner>/seed=<seed>/``.
Re-running the same command skips completed runs with the same config, resumes the others
from their checkpoint, and refuses to mix runs of different configs unless ``force=true``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtbench import MtbenchError
from mtbench.report.runs import METRICS, atomic_write_text, write_csv, write_json

log = logging.getLogger("mtbench")

#: runs of this process that failed (the basic launcher runs jobs in-process); main() exits 1 if any
FAILED: list[str] = []

#: config keys that do not change a run's numbers: ignored when deciding whether a finished run
#: in the same folder is the same run
IGNORED_KEYS = ("force", "results_dir", "trainer.progress")


def validate(cfg: DictConfig) -> None:
    """Reject options that cannot work, naming the option (one line each)."""
    t = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = t.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise MtbenchError(f"trainer.{key} must be a positive integer (got {value!r})")
    lr = t.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise MtbenchError(f"trainer.lr must be a positive number (got {lr!r})")
    if not isinstance(cfg.get("seed"), int):
        raise MtbenchError(f"seed must be an integer (got {cfg.get('seed')!r})")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (IGNORED_KEYS aside)."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not any(k == i or k.startswith(i + ".") for i in IGNORED_KEYS))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _previous(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning(f"mtbench: {path} is unreadable ({e}); the run starts again")
        return None


def _base_record(cfg: DictConfig) -> dict[str, Any]:
    return {
        "task": cfg.task.name,
        "combiner": cfg.combiner.name,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "epochs": int(cfg.trainer.epochs),
        "name": cfg.name,
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one configured run in ``run_dir`` (or skip / resume it); return metrics.json's content.

    The whole run holds the run folder's lock (``mtbench.report.lock``: a run another live
    process holds is skipped, status ``skipped``, and nothing is written into its folder) and
    handles SIGTERM/SIGINT (``mtbench.train.StopFlag``): a signal at any point leaves the run
    ``interrupted`` and resumable, and raises ``Interrupted`` or ``StopNow``.
    """
    from mtbench.report.lock import Locked, RunLock
    from mtbench.train import Interrupted, StopFlag

    with StopFlag() as stop:
        try:
            with RunLock(run_dir):
                record = _run_owned(cfg, run_dir, stop)
        except Locked as e:
            log.warning(f"[{cfg.name}] {cfg.combiner.name} seed={cfg.seed}: {e}, skipped")
            record = {**_base_record(cfg), "status": "skipped", "reason": str(e)}
    if stop.signum is not None:  # came while the final files were written: the sweep stops here
        raise Interrupted(stop.signum, f"after this run ended ({record['status']})")
    return record


def _run_owned(cfg: DictConfig, run_dir: Path, stop: Any) -> dict[str, Any]:
    """``run``'s work, with the run folder's lock held and the signal handler ``stop`` installed."""
    from mtbench.train import CHECKPOINT, Interrupted, StopNow, TrainingFailed, train  # heavy imports after the checks

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    previous = _previous(run_dir)
    if previous is not None and previous.get("status") != "completed" and not (run_dir / CHECKPOINT).exists():
        previous = None  # stopped before its first checkpoint: nothing to resume, start afresh
    if previous is not None and not cfg.get("force", False):
        diff = config_diff(previous.get("config", {}), resolved)
        if diff:
            raise MtbenchError(
                f"{run_dir} holds a {previous.get('status')} run with another config ({'; '.join(diff[:6])}"
                f"{'; ...' if len(diff) > 6 else ''}); use force=true to replace it, or name=<other> to keep both"
            )
        if previous.get("status") == "completed":
            log.info(f"[{cfg.name}] {cfg.combiner.name} seed={cfg.seed}: already completed with this config, skipped ({run_dir})")
            return previous
    elif previous is not None:  # force=true: start this run again from scratch
        for name in (CHECKPOINT, METRICS, "history.csv", "per_attribute.csv", "error.log"):
            (run_dir / name).unlink(missing_ok=True)

    record: dict[str, Any] = {**_base_record(cfg), "status": "running", "config": resolved}
    record["started_at"] = (previous or {}).get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_dir / METRICS, record)
    t0 = time.time()

    def on_epoch(history: list[dict[str, Any]]) -> None:
        write_csv(run_dir / "history.csv", history)

    try:
        result = train(cfg, run_dir=run_dir, on_epoch=on_epoch, stop=stop)
    except (MtbenchError, OSError):
        if previous is None and not (run_dir / CHECKPOINT).exists():
            (run_dir / METRICS).unlink(missing_ok=True)  # bad input: leave no run behind
        raise
    except (Interrupted, StopNow) as e:
        record.update(status="interrupted", reason=str(e), wall_s=time.time() - t0)
        write_json(run_dir / METRICS, record)
        raise
    except (TrainingFailed, Exception) as e:  # noqa: B014 - the run fails, the sweep goes on
        reason = str(e) if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}"
        atomic_write_text(run_dir / "error.log", traceback.format_exc())
        record.update(status="failed", reason=reason, wall_s=time.time() - t0)
        write_json(run_dir / METRICS, record)
        return record
    history = result.pop("history")
    per_attribute = result.pop("test_per_attribute")
    write_csv(run_dir / "history.csv", history)
    if per_attribute:
        write_csv(run_dir / "per_attribute.csv", per_attribute)
    record.update(result)
    record.update(status="completed", wall_s=time.time() - t0, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record["config"] = record.pop("config")  # the numbers first for a human reader
    write_json(run_dir / METRICS, record)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # a completed run needs no checkpoint
    return record


def _error(message: str, exc: BaseException | None = None, code: int = 2) -> None:
    """One line on stderr and exit ``code``; with HYDRA_FULL_ERROR=1 the exception's traceback instead."""
    if exc is not None and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"mtbench: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path="pkg://mtbench.configs", config_name="config")
def _app(cfg: DictConfig) -> dict[str, Any] | None:
    from mtbench.train import AGAIN, Interrupted, StopNow

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        record = run(cfg, run_dir)
    except MtbenchError as e:
        _error(str(e), e)
    except (Interrupted, StopNow) as e:
        print(AGAIN if getattr(e, "again", False) else f"mtbench: {run_dir}: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except OSError as e:
        hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        _error(f"cannot write the results in {run_dir}: {e.strerror or e}; {hint} (or set results_dir=...) and re-run: the run resumes from its last checkpoint", e)
    if record["status"] == "failed":
        FAILED.append(str(run_dir))
        log.error(f"mtbench: run {run_dir} failed: {record['reason']} (details in {run_dir / 'error.log'})")
    elif record.get("wall_s") is not None and record["status"] == "completed":
        shown = "  ".join(f"test {header} {record['test'][key]:.2f}" for key, header, _ in record["metric_columns"])
        log.info(f"[{cfg.name}] {cfg.combiner.name} seed={cfg.seed}: {shown}  step {1000 * record['train_step_s']:.1f} ms  -> {run_dir}")
    return record


def _check_results_dir(argv: list[str]) -> None:
    """Fail early, in one line, when the results folder cannot be created (Hydra would give a traceback)."""
    root = "results"
    for arg in argv:
        if arg.startswith("results_dir="):
            root = arg.split("=", 1)[1]
    path = Path(root)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                _error(f"results_dir={root}: {parent} is a file, not a folder; choose another results_dir")
            if not os.access(parent, os.W_OK | os.X_OK):
                _error(f"results_dir={root}: {parent} is not writable; choose another results_dir")
            break


def main() -> None:
    """Console entry point: run the Hydra app, exit 1 if any run of this process failed."""
    _check_results_dir(sys.argv[1:])
    _app()
    if FAILED:
        print(f"mtbench: {len(FAILED)} run(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

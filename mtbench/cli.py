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
from hydra.experimental.callback import Callback
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
    """Reject options that cannot work before any run starts, naming the option, the value
    and what is allowed (one line): the trainer's, the seed, the model's, the task's (checked
    without building its data) and the combiner's (the combiner is constructed)."""
    from mtbench.combiners import build_combiner
    from mtbench.data import check_task
    from mtbench.models import check_model
    from mtbench.options import check_bool, check_int
    from mtbench.train.options import check_trainer

    check_trainer(cfg.trainer)
    check_int("seed", cfg.get("seed"), minimum=0)
    check_bool("force", cfg.get("force", False))
    check_model(cfg.model)
    spec = check_task(cfg.task)
    if spec is None:
        return
    select = cfg.trainer.get("select_metric")
    if select and select not in spec.metric_keys:
        raise MtbenchError(f"trainer.select_metric={select!r} is not a metric of task {cfg.task.name}; choose one of: {', '.join(spec.metric_keys)}")
    build_combiner(cfg.combiner, spec.num_tasks, default_leak=spec.default_leak)


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
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        return data
    except (OSError, ValueError) as e:
        log.warning(f"mtbench: {path} is unreadable ({e}); the run starts again")
        return None


def _tidy(run_dir: Path, previous: dict[str, Any] | None) -> None:
    """Remove what a run killed at the wrong moment leaves: temporary checkpoint files of a
    process that is gone, and the checkpoint next to a metrics.json that says completed."""
    from mtbench.train import CHECKPOINT
    from mtbench.train.checkpoint import remove_stale_tmp

    for path in remove_stale_tmp(run_dir, CHECKPOINT):
        log.warning(f"mtbench: removed {path}, left by a process that stopped while saving a checkpoint")
    if previous is not None and previous.get("status") == "completed" and (run_dir / CHECKPOINT).exists():
        (run_dir / CHECKPOINT).unlink()
        log.warning(f"mtbench: removed {run_dir / CHECKPOINT}: the run is completed and needs no checkpoint")


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
    """Train one configured run in ``run_dir`` (or skip / resume it); return metrics.json's content."""
    from mtbench.train import CHECKPOINT, Interrupted, TrainingFailed, train  # heavy imports after the checks

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    previous = _previous(run_dir)
    _tidy(run_dir, previous)
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
        result = train(cfg, run_dir=run_dir, on_epoch=on_epoch)
    except (MtbenchError, OSError):
        if previous is None and not (run_dir / CHECKPOINT).exists():
            (run_dir / METRICS).unlink(missing_ok=True)  # bad input: leave no run behind
        raise
    except Interrupted as e:
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
    from mtbench.train import Interrupted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        record = run(cfg, run_dir)
    except MtbenchError as e:
        _error(str(e), e)
    except Interrupted as e:
        print(f"mtbench: {run_dir}: {e}", file=sys.stderr)
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


def _check_run_folder(path: Path) -> None:
    """One line and exit 2 when the run folder ``path``, or its first existing parent, is a file
    or not writable, or a file Hydra and the log write into it is not writable."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                _error(f"{parent} is a file, not a folder; move it away (or set name=... or results_dir=...)")
            if not os.access(parent, os.W_OK | os.X_OK):
                _error(f"{parent} is not writable; make it writable (chmod u+w) or set name=... or results_dir=...")
            break
    inner = [path / ".hydra", path / "mtbench.log", *(path / ".hydra").glob("*.yaml")]
    for p in inner:
        if p.exists() and not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
            _error(f"{p} is not writable; make it writable (chmod u+w) or set name=... or results_dir=...")


def _check_sweep_folder(sweep: Path, combiners: list[str] | None = None) -> None:
    """The sweep's folder checked like a run folder; under its ``runs/`` (the folders of
    ``combiners``, all when None), a file where a combiner, variant or seed folder belongs,
    and a run folder that is not writable, are errors."""
    _check_run_folder(sweep)
    runs = sweep / "runs"
    if not runs.is_dir():
        return
    names = combiners or ["*"]
    entries = [e for n in names for e in (*runs.glob(n), *runs.glob(f"{n}/*"), *runs.glob(f"{n}/*/seed=*"))]
    for entry in sorted(set(entries)):
        if not entry.is_dir():
            _error(f"{entry} is a file, not a folder: it stands where a run's folder belongs; move it away")
        if entry.name.startswith("seed="):
            _check_run_folder(entry)


class FolderCheck(Callback):
    """Hydra callback: before Hydra creates any run folder, the folders the runs write to are
    checked (one line, exit 2, instead of a traceback from Hydra)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_run_folder(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_sweep_folder(Path(str(config.hydra.sweep.dir)), _swept_combiners(config))


def _swept_combiners(config: DictConfig) -> list[str] | None:
    """The combiner names a sweep's ``combiner=a,b`` lists (command line first, then the
    sweeper's params); None when that is not a plain list of names."""
    value = None
    for override in config.hydra.overrides.task:
        key, _, rest = str(override).partition("=")
        if key.lstrip("+~") == "combiner":
            value = rest
    params = config.hydra.sweeper.get("params") or {}
    if value is None and "combiner" in params:
        value = str(params["combiner"])
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")]
    return names if all(n and all(c.isalnum() or c in "_-." for c in n) for n in names) else None


def main() -> None:
    """Console entry point: run the Hydra app, exit 1 if any run of this process failed."""
    _check_results_dir(sys.argv[1:])
    _app()
    if FAILED:
        print(f"mtbench: {len(FAILED)} run(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The ``mtbench`` command: a Hydra application that trains one run per job.

    mtbench task=shapes40 combiner=baseline seed=3 trainer.epochs=2 trainer.device=cpu
    mtbench -m                      # every combiner (the primary config's hydra.sweeper.params)
    mtbench -m seed=0,1,2

Each run writes ``metrics.json`` (status ``running`` while it trains, then ``completed`` or
``failed`` with a ``reason``), ``history.csv`` and ``per_attribute.csv`` into its folder
``results/<name>/runs/<combiner>/seed=<seed>/``; the table callback aggregates them.
"""

from __future__ import annotations

import logging
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
    """Train one configured run and write its files into ``run_dir``; return metrics.json's content."""
    from mtbench.train import TrainingFailed, train  # heavy imports after the config checks

    resolved = OmegaConf.to_container(cfg, resolve=True)
    record: dict[str, Any] = {**_base_record(cfg), "status": "running", "config": resolved}
    record["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_dir / METRICS, record)
    t0 = time.time()
    try:
        result = train(cfg)
    except MtbenchError:
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
    # keep the resolved config last: the numbers first for a human reader
    record["config"] = record.pop("config")
    write_json(run_dir / METRICS, record)
    return record


@hydra.main(version_base="1.3", config_path="pkg://mtbench.configs", config_name="config")
def _app(cfg: DictConfig) -> dict[str, Any] | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        record = run(cfg, run_dir)
    except MtbenchError as e:
        print(f"mtbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    if record["status"] == "failed":
        FAILED.append(str(run_dir))
        log.error(f"mtbench: run {run_dir} failed: {record['reason']} (details in {run_dir / 'error.log'})")
    else:
        shown = "  ".join(f"test {header} {record['test'][key]:.2f}" for key, header, _ in record["metric_columns"])
        log.info(f"[{cfg.name}] {cfg.combiner.name} seed={cfg.seed}: {shown}  step {1000 * record['train_step_s']:.1f} ms  -> {run_dir}")
    return record


def main() -> None:
    """Console entry point: run the Hydra app, exit 1 if any run of this process failed."""
    _app()
    if FAILED:
        print(f"mtbench: {len(FAILED)} run(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

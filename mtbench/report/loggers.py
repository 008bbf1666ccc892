"""Experiment trackers a run reports to beside its own files (the ``logger=`` config group).

``logger=csv`` (the default) adds nothing to the files every run writes (``metrics.json``,
``history.csv``, ``per_attribute.csv``). ``tensorboard`` writes event files in
``<run>/tensorboard/``; ``wandb`` a Weights & Biases run in ``<run>/wandb/`` (``WANDB_MODE=offline``
or ``logger.wandb.mode=offline`` needs no network); ``mlflow`` a run in a local SQLite store
(``<results_dir>/mlflow.db``, or ``logger.mlflow.tracking_uri``). Several at once:
``logger=[tensorboard,mlflow]``.

Each backend gets the resolved config, the combiner, variant and seed as tags, every number of
each epoch's ``history.csv`` row, the selected epoch's test metrics, and at the end of a sweep
the comparison table (:func:`log_table`). Every backend is one small class behind
:class:`Logger`; one whose library is missing is refused before any run starts, in one line
naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.variant import flatten

log = logging.getLogger("mtbench")

#: backend -> (the module it needs, the pyproject extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "csv": ("", ""),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def selected(logger_cfg: Any) -> list[str]:
    """The backends a ``logger`` node selects (its keys; ``csv`` included when present)."""
    if logger_cfg is None:
        return []
    if isinstance(logger_cfg, str):
        return [logger_cfg]
    if hasattr(logger_cfg, "keys"):
        return [str(k) for k in logger_cfg.keys()]
    raise MtbenchError(
        f"logger={logger_cfg!r} is not a logger choice; use logger=csv, logger=tensorboard or logger=[tensorboard,mlflow]"
    )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def check_loggers(logger_cfg: Any) -> list[str]:
    """Check the chosen backends before any run starts: known, and their library installed
    (else one line naming the extra). Returns the backends other than ``csv``."""
    names = selected(logger_cfg)
    for name in names:
        if name not in BACKENDS:
            raise MtbenchError(
                f"logger {name!r} is unknown; choose among {', '.join(BACKENDS)} (e.g. logger=[tensorboard,mlflow])"
            )
        module, extra = BACKENDS[name]
        if module and not _installed(module):
            raise MtbenchError(f'logger={name} needs the {module} package; install it with pip install -e ".[{extra}]"')
        options = logger_cfg.get(name) if hasattr(logger_cfg, "get") else None
        if options is not None and not hasattr(options, "keys"):
            raise MtbenchError(f"logger.{name} must hold the backend's options (got {options!r})")
    if "mlflow" in names:
        uri = logger_cfg.mlflow.get("tracking_uri")
        if uri is not None and not isinstance(uri, str):
            raise MtbenchError(f"logger.mlflow.tracking_uri must be a URI or a folder (got {uri!r})")
    if "wandb" in names:
        mode = logger_cfg.wandb.get("mode")
        if mode is not None and mode not in ("online", "offline", "disabled"):
            raise MtbenchError(
                f"logger.wandb.mode={mode!r} is not allowed; choose online, offline, disabled or null (WANDB_MODE decides)"
            )
    return [n for n in names if n != "csv"]


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a history row or a record (``epoch`` aside)."""
    out = {}
    for k, v in row.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class Logger:
    """One backend. ``start`` once per run (the resolved config and the tags), ``epoch`` per
    history row, ``finish`` with the test metrics (``None`` when the run did not complete)."""

    def __init__(self, options: Any, run_dir: Path, results_root: Path):
        self.options = dict(options or {})
        self.run_dir = Path(run_dir)
        self.results_root = Path(results_root)

    def start(self, config: dict[str, Any], tags: dict[str, str]) -> None: ...

    def epoch(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, final: dict[str, float] | None, status: str) -> None: ...


class TensorBoardLogger(Logger):
    def start(self, config, tags):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / self.options.get("dir", "tensorboard")))
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.writer.add_text("tags", ", ".join(f"{k}={v}" for k, v in tags.items()), 0)

    def epoch(self, step, values):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self, final, status):
        if final:
            step = int(final.pop("best_epoch", 0))
            for k, v in final.items():
                self.writer.add_scalar(k, v, step)
        self.writer.add_text("status", status, 0)
        self.writer.close()


def mlflow_uri(options: dict[str, Any], results_root: Path) -> str:
    """The tracking URI: ``logger.mlflow.tracking_uri`` (a URI, or a folder), else a SQLite store
    ``sqlite:///<results_dir>/mlflow.db`` (MLflow 3 reads it without asking, unlike a folder store)."""
    uri = options.get("tracking_uri")
    if not uri:
        results_root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(results_root / 'mlflow.db').resolve()}"
    if "://" in str(uri) or str(uri).startswith(("databricks", "sqlite:")):
        return str(uri)
    return Path(uri).resolve().as_uri()


def mlflow_client(uri: str):
    """An ``MlflowClient`` of ``uri`` (a local folder store is allowed without asking)."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 asks before using a folder store
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


class MlflowLogger(Logger):
    def start(self, config, tags):
        self.client = mlflow_client(mlflow_uri(self.options, self.results_root))
        experiment = mlflow_experiment(
            self.client, str(self.options.get("experiment") or config.get("name", "mtbench"))
        )
        run_name = f"{tags['combiner']}/{tags['variant']}/seed={tags['seed']}"
        self.run_id = self.client.create_run(
            experiment, tags={**tags, "run_dir": str(self.run_dir)}, run_name=run_name
        ).info.run_id
        params = {k: str(v)[:6000] for k, v in flatten(config).items() if not k.startswith("hydra.")}
        params.update(variant=tags["variant"], seed=tags["seed"])
        from mlflow.entities import Param

        items = [Param(k[:250], v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def epoch(self, step, values):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, final, status):
        if final:
            step = int(final.pop("best_epoch", 0))
            for k, v in final.items():
                self.client.log_metric(self.run_id, k, v, step=step)
        self.client.set_terminated(
            self.run_id, "FINISHED" if status == "completed" else "FAILED" if status == "failed" else "KILLED"
        )


class WandbLogger(Logger):
    def start(self, config, tags):
        import wandb

        folder = self.run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {k: self.options[k] for k in ("project", "entity", "mode") if self.options.get(k) is not None}
        kwargs.setdefault("project", "mtbench")
        self.run = wandb.init(
            dir=str(self.run_dir), config=config, group=str(config.get("name", "")),
            name=f"{tags['combiner']}/{tags['variant']}/seed={tags['seed']}",
            tags=[tags["combiner"], f"variant={tags['variant']}"[:64], f"seed={tags['seed']}"],
            reinit="create_new", settings=wandb.Settings(silent=True, console="off"), **kwargs,
        )  # fmt: skip

    def epoch(self, step, values):
        self.run.log({**values, "epoch": step})

    def finish(self, final, status):
        if final:
            for k, v in final.items():
                self.run.summary[k] = v
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


class RunLoggers:
    """The chosen backends of one run, called by ``mtbench.cli`` through the trainer's per-epoch
    hook. A backend that fails is reported once (a warning) and dropped: the run goes on."""

    def __init__(self, logger_cfg: Any, run_dir: Path, results_root: Path):
        names = [n for n in selected(logger_cfg) if n != "csv"]
        self.loggers: list[tuple[str, Logger]] = [
            (n, CLASSES[n](logger_cfg.get(n), run_dir, results_root)) for n in names
        ]
        self.logged = 0
        self.started = False

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, method: str, *args: Any) -> None:
        for item in list(self.loggers):
            name, logger = item
            try:
                getattr(logger, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker must not lose the run
                log.warning(f"mtbench: logger {name} failed ({type(e).__name__}: {e}); the run goes on without it")
                self.loggers.remove(item)

    def start(self, config: dict[str, Any], tags: dict[str, str]) -> None:
        self._each("start", config, tags)
        self.started = True

    def on_epoch(self, write_history: Any) -> Any:
        """The trainer's per-epoch hook: ``write_history(rows)`` (the run's history.csv), then
        the new rows to every backend; ``write_history`` itself when there is no backend."""
        if not self.loggers:
            return write_history

        def hook(rows: list[dict[str, Any]]) -> None:
            write_history(rows)
            self.history(rows)

        return hook

    def history(self, rows: list[dict[str, Any]]) -> None:
        """The rows not logged yet (all of them the first time: a resumed run logs its whole history)."""
        for row in rows[self.logged :]:
            self._each("epoch", int(row["epoch"]), numbers(row))
        self.logged = len(rows)

    def finish(self, record: dict[str, Any]) -> None:
        if not self.started:
            return
        self.started = False
        status = str(record.get("status"))
        final = None
        if status == "completed":
            final = {f"test_{k}": v for k, v in numbers(record.get("test") or {}).items()}
            final.update({f"best_val_{k}": v for k, v in numbers(record.get("val") or {}).items()})
            for key in ("train_step_s", "examples_per_s", "wall_s"):
                if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]):
                    final[f"run_{key}"] = float(record[key])
            final["best_epoch"] = int(record.get("best_epoch", 0))
        self._each("finish", dict(final) if final is not None else None, status)


def log_table(logger_cfg: Any, folder: Path, results_root: Path) -> None:
    """The sweep's comparison table (``folder/table.md``, ``table.csv``) to each chosen backend:
    TensorBoard text in ``folder/tensorboard``, an MLflow run ``comparison table`` with the
    files as artifacts, a W&B run (job type ``table``) with a ``wandb.Table``."""
    names = [n for n in selected(logger_cfg) if n != "csv"]
    table_md, table_csv = folder / "table.md", folder / "table.csv"
    if not names or not table_md.exists():
        return
    text = table_md.read_text(encoding="utf-8")
    for name in names:
        options = dict(logger_cfg.get(name) or {})
        try:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                with SummaryWriter(log_dir=str(folder / options.get("dir", "tensorboard"))) as w:
                    w.add_text("comparison_table", text, 0)
            elif name == "mlflow":
                client = mlflow_client(mlflow_uri(options, results_root))
                experiment = mlflow_experiment(client, str(options.get("experiment") or folder.name))
                run_id = client.create_run(
                    experiment, tags={"kind": "table", "folder": str(folder)}, run_name="comparison table"
                ).info.run_id
                for path in (table_md, table_csv):
                    if path.exists():
                        client.log_artifact(run_id, str(path))
                client.set_terminated(run_id)
            elif name == "wandb":
                import pandas as pd
                import wandb

                kwargs = {k: options[k] for k in ("project", "entity", "mode") if options.get(k) is not None}
                kwargs.setdefault("project", "mtbench")
                run = wandb.init(
                    dir=str(folder),
                    group=folder.name,
                    name="comparison table",
                    job_type="table",
                    reinit="create_new",
                    settings=wandb.Settings(silent=True, console="off"),
                    **kwargs,
                )
                if table_csv.exists():
                    run.log({"comparison_table": wandb.Table(dataframe=pd.read_csv(table_csv))})
                run.summary["comparison_table_md"] = text
                run.finish()
        except Exception as e:  # noqa: BLE001 - the tables on disk are written already
            log.warning(f"mtbench: logger {name} could not take the comparison table ({type(e).__name__}: {e})")


__all__ = ["BACKENDS", "Logger", "RunLoggers", "check_loggers", "log_table", "selected"]

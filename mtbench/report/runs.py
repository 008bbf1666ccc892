"""One run's results on disk: ``metrics.json``, ``history.csv``, ``per_attribute.csv``, and the
run folder's lifecycle (:class:`RunDir`).

Every file is written atomically (:mod:`mtbench.files`: a temporary file in the same folder,
then a rename), so a reader never sees half a file, whatever happens to the writer.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os  # noqa: F401 - runs.os: the module whose fsync the disk-full test replaces
import time
from pathlib import Path
from typing import Any

from mtbench.files import atomic_write_text
from mtbench.variant import flatten

log = logging.getLogger("mtbench")

METRICS = "metrics.json"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# -- the run folder's lifecycle ------------------------------------------------------------------

HISTORY = "history.csv"
PER_ATTRIBUTE = "per_attribute.csv"
ERROR_LOG = "error.log"

#: config keys the configs no longer have: a saved run's config that holds them is not another config
RETIRED_KEYS = ("task.kind",)

#: config keys added since runs were first saved, with the value a saved config without them had
ADDED_KEYS: dict[str, Any] = {
    "task.columns": None, "task.preprocess": "center_crop", "task.head": "sigmoid",
    "trainer.max_steps_per_epoch": None, "trainer.overfit_batches": None, "trainer.max_eval_examples": None,
    "trainer.early_stopping.patience": None,
}  # fmt: skip


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (keys outside a run's identity aside:
    where files go, how fast it runs; and ``RETIRED_KEYS``)."""
    from mtbench.variant import is_identity_key

    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if is_identity_key(k) and k not in RETIRED_KEYS)
    a = {**{k: v for k, v in ADDED_KEYS.items() if k.split(".")[0] in {x.split(".")[0] for x in a}}, **a}
    b = {**{k: v for k, v in ADDED_KEYS.items() if k.split(".")[0] in {x.split(".")[0] for x in b}}, **b}
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in keys
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """One run's folder and what happens to it: ``metrics.json`` (status ``running``, then
    ``completed``, ``interrupted`` or ``failed``), ``history.csv``, ``per_attribute.csv``,
    ``error.log``, the checkpoint and the ``.lock``.

    ``lock()`` is the folder's lock (``mtbench.report.lock.RunLock``). ``begin(config, force)``
    decides between skipping (a completed run with the same config), resuming (a checkpoint
    with the same config), refusing (another config, without ``force``) and starting afresh;
    ``start``, ``write_history``, ``complete``, ``interrupted``, ``failed`` and ``abandon``
    write what each outcome leaves.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.metrics = self.path / METRICS
        self.history = self.path / HISTORY
        self.per_attribute = self.path / PER_ATTRIBUTE
        self.error_log = self.path / ERROR_LOG
        self.previous: dict[str, Any] | None = None
        self._t0 = time.time()

    @property
    def checkpoint(self) -> Path:
        from mtbench.train.checkpoint import CHECKPOINT

        return self.path / CHECKPOINT

    def lock(self):
        """``with run_dir.lock():`` holds the folder's lock; raises ``Locked`` when a live process holds it."""
        from mtbench.report.lock import RunLock

        return RunLock(self.path)

    # -- what the folder holds ---------------------------------------------------------------------
    def read_previous(self) -> dict[str, Any] | None:
        """The folder's ``metrics.json``, or None when there is none or it is unreadable (a warning)."""
        if not self.metrics.exists():
            return None
        try:
            data = json.loads(self.metrics.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            return data
        except (OSError, ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else e
            log.warning(f"mtbench: {self.metrics} is unreadable ({why}); the run starts again")
            return None

    def tidy(self, previous: dict[str, Any] | None) -> None:
        """Remove what a run killed at the wrong moment leaves: temporary checkpoint files of a
        process that is gone, and the checkpoint next to a metrics.json that says completed."""
        from mtbench.train.checkpoint import CHECKPOINT, remove_stale_tmp

        for path in remove_stale_tmp(self.path, CHECKPOINT):
            log.warning(f"mtbench: removed {path}, left by a process that stopped while saving a checkpoint")
        # the folder's lock is held: no other process writes here, so every temporary file of
        # an atomic write (``.<name>.<random>.tmp``) was left by a writer that was killed
        for name in (METRICS, HISTORY, PER_ATTRIBUTE, ERROR_LOG, "model.pt"):
            for path in self.path.glob(f".{name}.*.tmp"):
                try:
                    path.unlink()
                except OSError:
                    continue
                log.warning(f"mtbench: removed {path}, left by a process that stopped while writing it")
        if previous is not None and previous.get("status") == "completed" and self.checkpoint.exists():
            self.checkpoint.unlink()
            log.warning(f"mtbench: removed {self.checkpoint}: the run is completed and needs no checkpoint")

    def clear(self) -> None:
        """Remove every file of a run (its checkpoint, metrics.json, the CSV files, error.log)."""
        for path in (
            self.checkpoint,
            self.metrics,
            self.history,
            self.per_attribute,
            self.error_log,
            self.path / "model.pt",
        ):
            path.unlink(missing_ok=True)

    def begin(self, config: dict[str, Any], force: bool = False) -> bool:
        """Look at what the folder holds for a run of the resolved ``config``; True when that run
        is completed already (skip it: ``self.previous`` is its metrics.json). A run with another
        config is a one-line ``MtbenchError`` unless ``force`` (the folder is then cleared); a
        run stopped before its first checkpoint starts afresh; one with a checkpoint resumes."""
        from mtbench.errors import MtbenchError

        previous = self.read_previous()
        self.tidy(previous)
        if previous is not None and previous.get("status") != "completed" and not self.checkpoint.exists():
            previous = None  # stopped before its first checkpoint: nothing to resume, start afresh
        skip = False
        if previous is not None and not force:
            diff = config_diff(previous.get("config", {}), config)
            if diff:
                raise MtbenchError(
                    f"{self.path} holds a {previous.get('status')} run with another config ({'; '.join(diff[:6])}"
                    f"{'; ...' if len(diff) > 6 else ''}); use force=true to replace it, or name=<other> to keep both"
                )
            skip = previous.get("status") == "completed"
            if skip:
                self.check_completed(previous)
                self.check_history(previous)
        elif previous is not None:  # force=true: start this run again from scratch
            self.clear()
        self.previous = previous
        return skip

    def check_completed(self, previous: dict[str, Any]) -> None:
        """A completed run's ``metrics.json`` must hold its numbers (``metric_columns``, a
        number per column in ``test`` and ``val``, ``train_step_s``): else a one-line
        ``MtbenchError`` naming it (the skipped run's summary would read them)."""
        from mtbench.errors import MtbenchError

        def number(value: Any) -> bool:
            return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

        columns = previous.get("metric_columns")
        ok = isinstance(columns, list) and bool(columns)
        ok = ok and all(isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) for c in columns)
        for split in ("test", "val"):
            values = previous.get(split)
            ok = ok and isinstance(values, dict) and all(c[0] in values and number(values[c[0]]) for c in columns)
        ok = ok and number(previous.get("train_step_s")) and number(previous.get("wall_s"))
        if not ok:
            raise MtbenchError(
                f"{self.metrics} says completed but lacks its numbers (metric_columns, test, val, train_step_s); "
                "re-run it with force=true"
            )

    def check_history(self, previous: dict[str, Any]) -> None:
        """A completed run's ``history.csv`` must be there, with one row per epoch (1, 2, ...):
        else a one-line ``MtbenchError`` naming it (a skipped re-run would hide the loss)."""
        from mtbench.errors import MtbenchError

        fix = "re-run it with force=true to write it again (its metrics.json is kept until then)"
        try:
            rows = list(csv.DictReader(io.StringIO(self.history.read_text(encoding="utf-8"))))
        except FileNotFoundError:
            raise MtbenchError(f"{self.history} of a completed run is missing; {fix}") from None
        except (OSError, ValueError, csv.Error) as e:
            raise MtbenchError(f"{self.history} of a completed run is unreadable ({e}); {fix}") from None
        epochs = [row.get("epoch") for row in rows]
        expected = previous.get("epochs")
        if (
            not rows
            or epochs != [str(i) for i in range(1, len(rows) + 1)]
            or (isinstance(expected, int) and len(rows) != expected)
        ):
            raise MtbenchError(
                f"{self.history} of a completed run is damaged (not one row per epoch 1..{expected}); {fix}"
            )

    # -- what each outcome writes ------------------------------------------------------------------
    def start(self, base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Write the run's record to metrics.json: ``base`` (what names the run), status
        ``running``, the resolved ``config`` and ``started_at`` (kept from a resumed run); return it."""
        record = {**base, "status": "running", "config": config}
        record["started_at"] = (self.previous or {}).get("started_at") or _now()
        write_json(self.metrics, record)
        self._t0 = time.time()
        return record

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.history, rows)

    def abandon(self) -> None:
        """The run could not start (bad input, unwritable file): leave no run behind where there
        was none and nothing can be resumed."""
        if self.previous is None and not self.checkpoint.exists():
            self.metrics.unlink(missing_ok=True)

    def interrupted(self, record: dict[str, Any], reason: str) -> dict[str, Any]:
        record.update(status="interrupted", reason=reason, wall_s=time.time() - self._t0)
        write_json(self.metrics, record)
        return record

    def failed(self, record: dict[str, Any], reason: str, details: str) -> dict[str, Any]:
        """Status ``failed`` with ``reason``; ``details`` (a traceback) go to error.log."""
        atomic_write_text(self.error_log, details)
        record.update(status="failed", reason=reason, wall_s=time.time() - self._t0)
        write_json(self.metrics, record)
        return record

    def complete(self, record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """Write the trainer's ``result`` (its ``history`` to history.csv, its
        ``test_per_attribute`` to per_attribute.csv, the rest into metrics.json, status
        ``completed``) and remove the checkpoint."""
        result = dict(result)
        history = result.pop("history")
        per_attribute = result.pop("test_per_attribute")
        self.write_history(history)
        if per_attribute:
            write_csv(self.per_attribute, per_attribute)
        record.update(result)
        record.update(status="completed", wall_s=time.time() - self._t0, finished_at=_now())
        record["config"] = record.pop("config")  # the numbers first for a human reader
        write_json(self.metrics, record)
        self.checkpoint.unlink(missing_ok=True)  # a completed run needs no checkpoint
        return record

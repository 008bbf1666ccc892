"""Reading a results folder: every run's ``metrics.json`` into one frame (:func:`load_runs`),
the rows of the tables (combiner and variant, in the paper's order) and the speed of each run
against its reference baseline. Used by the tables (``report/table.py``) and the plots
(``report/plots.py``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from mtbench.combiners import COMBINERS
from mtbench.report.runs import METRICS

__all__ = [
    "DEFAULT_COLUMNS",
    "ORDER",
    "common_settings",
    "completed_with_speed",
    "label",
    "load_runs",
    "ordered",
    "reference",
    "row_keys",
    "run_files",
    "single_task_runs",
    "speed_clock",
]

#: the paper's order (the registry ``mtbench.combiners.COMBINERS``); other combiners follow alphabetically
ORDER = tuple(COMBINERS)

#: the table's metric columns when the runs do not name theirs: (key in "test", header, higher is better)
DEFAULT_COLUMNS = (("error_rate", "error rate (%)", False), ("max_f1", "max F1", True))


def run_files(folder: Path | str) -> list[Path]:
    """Every run's ``metrics.json`` under ``folder``: ``runs/<combiner>/<variant>/seed=<seed>/``
    (and the older ``runs/<combiner>/seed=<seed>/``, read as variant ``default``)."""
    folder = Path(folder)
    found = set(folder.glob(f"runs/*/*/seed=*/{METRICS}")) | set(folder.glob(f"runs/*/seed=*/{METRICS}"))
    return sorted(found)


def label(
    combiner: str, variant: str, overrides: dict[str, str] | None = None, common: dict[str, str] | None = None
) -> str:
    """A row's label: the combiner and, unless ``default``, its settings (``graddrop (leak=0.5)``),
    leaving out the ``common`` ones (those every row of the table shares)."""
    common = common or {}
    if variant == "default" or overrides is None:
        return combiner if variant == "default" else f"{combiner} ({variant})"
    shown = [
        f"{k[len('combiner.') :] if k.startswith('combiner.') else k}={v}"
        for k, v in overrides.items()
        if common.get(k) != v
    ]
    return f"{combiner} ({', '.join(shown)})" if shown else combiner


def common_settings(runs: pd.DataFrame) -> dict[str, str]:
    """The settings every run of the frame shares (same key, same value): said once for the
    whole table instead of in each row's label."""
    if runs.empty or "overrides" not in runs:
        return {}
    all_overrides = [dict(o or {}) for o in runs["overrides"]]
    first = all_overrides[0]
    return {k: v for k, v in first.items() if all(o.get(k) == v for o in all_overrides[1:])}


def load_runs(folder: Path) -> tuple[pd.DataFrame, list[str], int, tuple[tuple[str, str, bool], ...]]:
    """One row per run with a readable ``metrics.json`` that is not still running.

    Returns the frame, the files skipped (corrupt), the number of runs in progress, and the
    metric columns (as the runs' ``metric_columns`` name them). The frame has the columns
    ``combiner``, ``variant``, ``overrides`` (a dict), ``label``, ``seed``, ``status``, ``reason``,
    ``task``, ``tasks`` (the trained tasks, comma-separated; empty: all), ``n_tasks``, ``report``
    (``best_val`` or ``last_k``; empty when the run does not say) and ``report_k``,
    ``run_dir``, ``started_at`` and, for completed runs, ``test_<key>`` per metric,
    ``train_step_s`` (wall time; device time on a GPU), ``train_step_cpu_s`` (process CPU time,
    NaN for runs without it: on a GPU, or made before mtbench recorded it), ``load_max`` (the
    highest 1-minute load average sampled during the run, NaN without samples), ``cores`` and
    ``overloaded`` (the load exceeded the cores), ``val_select`` (the validation select metric),
    ``select_metric`` and ``select_higher``.
    """
    records, skipped, in_progress = [], [], 0
    columns: tuple[tuple[str, str, bool], ...] | None = None
    for path in run_files(folder):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(m, dict):
                raise TypeError(f"a JSON {type(m).__name__}, not an object")
            status = m["status"]
            overrides = {str(k): str(v) for k, v in dict(m.get("overrides") or {}).items()}
            variant = str(m.get("variant") or "default")
            record = {
                "combiner": str(m["combiner"]),
                "variant": variant,
                "overrides": overrides,
                "seed": _seed(m["seed"]),
                "status": status,
            }
            record.update(label=label(record["combiner"], variant, overrides), reason=m.get("reason"))
            record.update(
                task=str(m.get("task", "")), run_dir=str(path.parent), started_at=str(m.get("started_at") or "")
            )
            tasks = _tasks(m)
            record.update(tasks=",".join(tasks), n_tasks=len(tasks))
            record.update(report=str(m.get("report") or ""), report_k=int(m.get("report_k") or 0))
            if status == "completed":
                cols = tuple((str(k), str(h), bool(hi)) for k, h, hi in m.get("metric_columns", DEFAULT_COLUMNS))
                record.update({f"test_{k}": float(m["test"][k]) for k, _, _ in cols})
                record["train_step_s"] = float(m["train_step_s"])
                cpu = m.get("train_step_cpu_s")
                record["train_step_cpu_s"] = float(cpu) if cpu is not None else math.nan
                load = m.get("load") or {}
                record["load_max"] = float(load["max_1m"]) if load.get("max_1m") is not None else math.nan
                record["cores"] = int(load["cores"]) if load.get("cores") else math.nan
                record["overloaded"] = bool(load.get("over_cores", False))
                record["device"] = str(m.get("device") or "")
                select = str(m.get("select_metric") or cols[0][0])
                higher = {k: hi for k, _, hi in cols}.get(select, cols[0][2])
                value = (m.get("val") or {}).get(select)
                record.update(
                    val_select=float(value) if value is not None else math.nan,
                    select_metric=select,
                    select_higher=bool(higher),
                )
                if columns is None or len(cols) > len(columns):  # single-task runs have fewer
                    columns = cols
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
            warnings.warn(
                f"skipping {path}: not a readable mtbench metrics file ({type(e).__name__}: {e})", stacklevel=2
            )
            skipped.append(str(path))
            continue
        if status == "running":
            in_progress += 1
            continue
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if len(frame):
        common = common_settings(frame)
        frame["label"] = [
            label(c, v, o, common) for c, v, o in zip(frame["combiner"], frame["variant"], frame["overrides"])
        ]
    return frame, skipped, in_progress, columns or DEFAULT_COLUMNS


def _tasks(m: dict) -> list[str]:
    """The tasks a run trained: ``tasks`` of its metrics.json, else its ``config.task.tasks``
    (empty when neither says: all of the task's)."""
    tasks = m.get("tasks")
    if tasks is None:
        tasks = ((m.get("config") or {}).get("task") or {}).get("tasks")
    return [str(t) for t in tasks] if isinstance(tasks, list) else []


def single_task_runs(runs: pd.DataFrame) -> pd.Series:
    """Which runs trained one task alone while others in the folder trained several (the
    single-task references of Δm%, not rows of the table)."""
    if runs.empty or "n_tasks" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return (runs["n_tasks"] == 1) & bool((runs["n_tasks"] != 1).any())


def _seed(value: object) -> int:
    """A run's seed: an integer >= 0 (not a list, a text or a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"seed {value!r} is not an integer >= 0")
    return value


def _order_key(name: str) -> tuple[int, str]:
    return (ORDER.index(name), "") if name in ORDER else (len(ORDER), name)


def ordered(names) -> list[str]:
    """Combiner names in the paper's order, others alphabetically after them."""
    return sorted(set(names), key=_order_key)


def row_keys(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The table's rows, ``(combiner, variant)``: combiners in the paper's order, the variants of
    each in the order they were first run (``default`` first)."""
    if runs.empty:
        return []
    first = runs.groupby(["combiner", "variant"])["started_at"].min()
    out = []
    for name in ordered(runs["combiner"].unique()):
        variants = first.loc[name]
        out += [(name, v) for v in sorted(variants.index, key=lambda v: (v != "default", variants[v], v))]
    return out


def _settings(runs: pd.DataFrame, combiner: str, variant: str) -> dict[str, str]:
    sub = runs[(runs["combiner"] == combiner) & (runs["variant"] == variant)]
    return dict(sub["overrides"].iloc[0]) if len(sub) else {}


def reference(runs: pd.DataFrame, combiner: str, variant: str) -> str | None:
    """The baseline variant a row is compared with: the one with the same non-combiner settings,
    else ``default``; None when the folder has neither."""
    done = runs[(runs["status"] == "completed") & (runs["combiner"] == "baseline")]
    if done.empty:
        return None
    own = {k: v for k, v in _settings(runs, combiner, variant).items() if not k.startswith("combiner.")}
    for v in dict.fromkeys(done["variant"]):
        if {k: x for k, x in _settings(runs, "baseline", v).items() if not k.startswith("combiner.")} == own:
            return str(v)
    return "default" if (done["variant"] == "default").any() else None


def speed_clock(done: pd.DataFrame) -> str:
    """The step time the speed ratios of ``done`` (completed runs) come from: ``cpu`` (each run's
    process CPU time per step, which a busy machine stretches less than the wall time) when every run
    has one, else ``wall`` (``train_step_s``: wall time on a CPU, device time on a GPU; runs made
    before mtbench recorded CPU time, or a mix of CPU and GPU runs)."""
    if done.empty or "train_step_cpu_s" not in done.columns:
        return "wall"
    return "cpu" if bool(done["train_step_cpu_s"].notna().all()) else "wall"


def completed_with_speed(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs, with ``step_s`` (the step time the speed uses: :func:`speed_clock`),
    ``speed`` (the mean ``step_s`` of the row's reference baseline runs over the run's own) and
    ``reference`` (that baseline's variant; empty without one)."""
    done = runs[runs["status"] == "completed"].copy()
    if done.empty:
        return done.assign(
            speed=pd.Series(dtype=float), step_s=pd.Series(dtype=float), reference=pd.Series(dtype=object)
        )
    refs = {key: reference(runs, *key) for key in row_keys(done)}
    done["step_s"] = done["train_step_cpu_s"] if speed_clock(done) == "cpu" else done["train_step_s"]
    base = done[done["combiner"] == "baseline"].groupby("variant")["step_s"].mean()
    done["reference"] = [refs.get((c, v)) or "" for c, v in zip(done["combiner"], done["variant"])]
    done["speed"] = [base.get(r, math.nan) / t if r else math.nan for r, t in zip(done["reference"], done["step_s"])]
    return done

"""``mtbench-table --diagnostics``: the mean fraction of conflicting task-gradient pairs per row.

Read from the runs' ``history.csv`` (the ``diag_conflict_frac`` column, written by runs trained
with ``trainer.diagnostics=true``): each run's mean over its epochs, then the mean and sample
standard deviation over the row's seeds (``conflict_frac_mean``, ``conflict_frac_std`` in
``table.csv``; the column ``conflict frac`` in ``table.md`` and ``table.tex``, never bold: neither
end of it is better). A row whose runs have no such column shows n/a.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from mtbench.report.aggregate import _mean_std

#: the history column the table averages
COLUMN = "diag_conflict_frac"


def run_conflict(run_dir: Path | str) -> float:
    """The run's mean over its epochs of ``diag_conflict_frac`` (NaN without the column)."""
    path = Path(run_dir) / "history.csv"
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as e:
        if Path(path).exists():
            warnings.warn(f"skipping {path}: {type(e).__name__}: {e}", stacklevel=2)
        return math.nan
    if COLUMN not in frame.columns:
        return math.nan
    values = pd.to_numeric(frame[COLUMN], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def add_conflict(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Add ``conflict_frac_mean`` and ``conflict_frac_std`` to ``table`` (one row per combiner and
    variant) from the completed ``runs``; the note printed under the table."""
    done = runs[runs["status"] == "completed"]
    means, stds = [], []
    for _, row in table.iterrows():
        sub = done[(done["combiner"] == row["combiner"]) & (done["variant"] == row["variant"])]
        values = pd.Series([run_conflict(d) for d in sub["run_dir"]], dtype=float)
        mean, std = _mean_std(values)
        means.append(mean)
        stds.append(std)
    table["conflict_frac_mean"], table["conflict_frac_std"] = means, stds
    if all(math.isnan(m) for m in means):
        return "Conflict frac: n/a, no run was trained with trainer.diagnostics=true."
    return (
        "Conflict frac: the fraction of task-gradient pairs with a negative inner product, per training step "
        "at the level where the combiner works, averaged over the epochs of each run, mean ± std over seeds "
        "(trainer.diagnostics=true; n/a: runs without it)."
    )

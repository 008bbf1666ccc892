"""One number per row of a table: Δm% and Mean Rank.

- **Δm%** (Maninis et al. 2019, as Nash-MTL and FAMO compute it): the mean over all K metric
  columns of ``(-1)^h_k (M_k - B_k) / B_k``, in percent, with ``h_k = 1`` where higher is better.
  Lower is better; 0 is the reference itself. The reference B is, in this order: the single-task
  runs in the same results folder (runs whose ``metrics.json`` ``tasks`` names one task, combiner
  ``baseline``; mean over their seeds), else the published single-task row (``combiner`` ``stl``)
  of the paper's numbers shown beside ours, else each row's own reference baseline row (the
  baseline with the same non-combiner settings). Every table says which.
- **Mean Rank**: each row's rank on each metric among the rows of the table (1 = best, ties share
  the mean of their ranks), averaged over the metrics.

The paper's rows get both too, computed from the paper's own numbers against the paper's own
single-task row (else its baseline row), ranked among the paper's rows; where the paper's file
lacks a metric, its printed ``delta_m`` / ``mean_rank`` columns are shown instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

#: the ``combiner`` name of the single-task row in a paper's numbers (``paper/<task>.csv``)
STL = "stl"


def delta_m(values: Mapping[str, float], base: Mapping[str, float], columns) -> float:
    """Δm% of ``values`` against ``base`` over every metric of ``columns`` ((key, header, higher
    is better) triples); NaN when a value or a reference is missing or a reference is 0."""
    terms = []
    for key, _, higher in columns:
        m, b = values.get(key, math.nan), base.get(key, math.nan)
        if m is None or b is None or pd.isna(m) or pd.isna(b) or b == 0:
            return math.nan
        terms.append((-1.0 if higher else 1.0) * (float(m) - float(b)) / float(b))
    return 100.0 * sum(terms) / len(terms) if terms else math.nan


def mean_ranks(frame: pd.DataFrame, columns, fmt: str = "test_{}_mean") -> pd.Series:
    """Each row's mean rank over the metrics of ``columns`` present in ``frame`` (column names
    ``fmt.format(key)``); ties get the mean of their ranks; a row's missing values are left out."""
    ranks = [
        frame[fmt.format(key)].rank(method="average", ascending=not higher)
        for key, _, higher in columns
        if fmt.format(key) in frame.columns
    ]
    if not ranks:
        return pd.Series(math.nan, index=frame.index, dtype=float)
    return pd.concat(ranks, axis=1).mean(axis=1, skipna=True)


@dataclass
class Reference:
    """Where Δm%'s B_k came from: ``values`` per metric key, ``kind`` (``single-task runs``,
    ``published single-task`` or ``baseline``) and a sentence for the notes."""

    values: dict[str, float] = field(default_factory=dict)
    kind: str = "baseline"
    note: str = ""


def stl_from_runs(stl_runs: pd.DataFrame | None, columns) -> tuple[dict[str, float], dict[str, int]]:
    """The single-task references found among ``stl_runs``: per metric key, the mean over the
    completed ``baseline`` runs that have it; and per task, how many runs gave it."""
    if stl_runs is None or stl_runs.empty:
        return {}, {}
    done = stl_runs[(stl_runs["status"] == "completed") & (stl_runs["combiner"] == "baseline")]
    values = {}
    for key, _, _ in columns:
        col = f"test_{key}"
        if col in done.columns and done[col].notna().any():
            values[key] = float(done[col].dropna().mean())
    counts: dict[str, int] = {}
    if "tasks" in done.columns:
        keys = [k for k, _, _ in columns]

        def first_column(task: str) -> int:  # the tasks in the order of the table's columns
            sub = done[done["tasks"] == task]
            have = [i for i, k in enumerate(keys) if f"test_{k}" in sub.columns and sub[f"test_{k}"].notna().any()]
            return min(have, default=len(keys))

        sizes = done.groupby("tasks").size()
        counts = {str(t): int(sizes[t]) for t in sorted(sizes.index, key=first_column)}
    return values, counts


def stl_from_paper(paper: pd.DataFrame | None, columns) -> dict[str, float]:
    """The paper's single-task row (``combiner`` ``stl``), per metric key it gives."""
    if paper is None or STL not in paper.index:
        return {}
    row = paper.loc[STL]
    return {k: float(row[k]) for k, _, _ in columns if k in paper.columns and pd.notna(row[k])}


def choose_reference(columns, stl_runs=None, paper=None, paper_file=None) -> Reference | None:
    """Single-task runs in the folder, else the paper's single-task row, for every metric; None
    when some metric has neither (Δm% is then against each row's baseline)."""
    keys = [k for k, _, _ in columns]
    runs, counts = stl_from_runs(stl_runs, columns)
    published = stl_from_paper(paper, columns)
    if all(k in runs for k in keys):
        shown = ", ".join(f"{t} ({n} run(s))" for t, n in counts.items())
        return Reference(runs, "single-task runs", f"single-task baseline runs in this folder: {shown}")
    if all(k in runs or k in published for k in keys):
        cite = ""
        if paper is not None and "citation" in paper.columns and pd.notna(paper.loc[STL].get("citation")):
            cite = f", {paper.loc[STL]['citation']}"
        mixed = [k for k in keys if k in runs]
        values = {k: runs.get(k, published.get(k)) for k in keys}
        note = f"the published single-task numbers (row {STL} of {paper_file}{cite})"
        if mixed:
            note = f"single-task runs in this folder for {', '.join(mixed)}; for the other metrics {note}"
        return Reference(values, "published single-task" if not mixed else "single-task runs + published", note)
    return None


def _row_values(row: pd.Series, columns) -> dict[str, float]:
    return {k: row.get(f"test_{k}_mean", math.nan) for k, _, _ in columns}


def add_summary(
    table: pd.DataFrame, columns, stl_runs=None, paper: pd.DataFrame | None = None, paper_file=None
) -> list[str]:
    """Add ``delta_m``, ``delta_m_vs``, ``mean_rank`` (and, given the paper's numbers,
    ``paper_delta_m``, ``paper_mean_rank``) to ``table`` (a frame of :func:`aggregate`, in
    place); return the notes saying what they are measured against."""
    if table.empty:
        return []
    ref = choose_reference(columns, stl_runs, paper, paper_file)
    if ref is not None:
        table["delta_m"] = [delta_m(_row_values(r, columns), ref.values, columns) for _, r in table.iterrows()]
        table["delta_m_vs"] = ref.kind
        against = ref.note
    else:
        bases = {r["variant"]: _row_values(r, columns) for _, r in table[table["combiner"] == "baseline"].iterrows()}
        table["delta_m"] = [
            delta_m(_row_values(r, columns), bases.get(r.get("reference") or "", {}), columns)
            for _, r in table.iterrows()
        ]
        table["delta_m_vs"] = "baseline"
        against = "each row's baseline run (the one its speed is measured against): no single-task runs in this folder"
        against += " and no published single-task numbers" if paper is None or STL not in paper.index else ""
    table["mean_rank"] = mean_ranks(table, columns).to_numpy()
    notes = [
        "Δm% (lower is better): the mean over the "
        f"{len(columns)} metric columns of ±(M_k − B_k)/B_k in %, + where lower is better (Maninis et al. 2019, "
        f"as Nash-MTL and FAMO compute it), B_k from {against}.",
        "Mean rank (lower is better): each row's rank on each metric among the rows of this table "
        "(1 = best, ties share the mean of their ranks), averaged over the metrics.",
    ]
    if paper is not None and any(c.startswith("paper_") for c in table.columns):
        notes += _add_paper_summary(table, columns, paper)
    return notes


def _add_paper_summary(table: pd.DataFrame, columns, paper: pd.DataFrame) -> list[str]:
    """The paper's Δm% and mean rank for each of our rows' combiners (its own numbers)."""
    theirs = paper.drop(index=[STL], errors="ignore")
    own = [(k, h, hi) for k, h, hi in columns if k in paper.columns]
    complete = len(own) == len(columns)
    base = stl_from_paper(paper, columns)
    base_name = f"its single-task row ({STL})"
    if len(base) < len(columns) and "baseline" in theirs.index:
        base = {k: float(theirs.loc["baseline", k]) for k, _, _ in own if pd.notna(theirs.loc["baseline", k])}
        base_name = "its baseline row"
    computed = {
        name: delta_m({k: row[k] for k, _, _ in own}, base, columns) if complete else math.nan
        for name, row in theirs.iterrows()
    }
    ranks = mean_ranks(theirs, own, fmt="{}") if own else pd.Series(dtype=float)
    printed_dm = theirs["delta_m"] if "delta_m" in theirs.columns else pd.Series(dtype=float)
    printed_mr = theirs["mean_rank"] if "mean_rank" in theirs.columns else pd.Series(dtype=float)

    def pick(name: str, mine: Mapping, printed: pd.Series) -> float:
        value = mine.get(name, math.nan)
        if pd.isna(value) and name in printed.index:
            value = printed[name]
        return float(value) if pd.notna(value) else math.nan

    table["paper_delta_m"] = [pick(c, computed, printed_dm) for c in table["combiner"]]
    use_ranks = complete and len(own)
    table["paper_mean_rank"] = [pick(c, ranks.to_dict() if use_ranks else {}, printed_mr) for c in table["combiner"]]
    how = (
        f"from the paper's own numbers against {base_name}, ranks among the paper's {len(theirs)} rows"
        if complete
        else "as the paper prints them (its file lacks some of our metrics)"
    )
    return [f"Paper Δm% and mean rank: {how}."]

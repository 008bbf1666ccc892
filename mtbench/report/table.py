"""Aggregate finished runs into the comparison table: ``table.md``, ``table.csv``, ``table.tex``.

    mtbench-table results/<name>

reads every ``results/<name>/runs/<combiner>/seed=<seed>/metrics.json`` and writes one row
per combiner: error rate (%) and max F1 as mean +- std over seeds (sample std, n-1), the
speed relative to the baseline, and the number of seeds. Speed vs baseline of a run is the
mean ``train_step_s`` of the baseline's runs in the same folder divided by the run's own
``train_step_s``; the table gives its mean +- std over the combiner's seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report.runs import METRICS, atomic_write_text

#: the paper's order; combiners not listed here follow alphabetically
ORDER = (
    "baseline",
    "clip",
    "gradpenalty",
    "mgda",
    "pcgrad",
    "gradnorm",
    "random_graddrop",
    "graddrop",
    "gradnorm_graddrop",
)

#: the table's metric columns when the runs do not name theirs: (key in "test", header, higher is better)
DEFAULT_COLUMNS = (("error_rate", "error rate (%)", False), ("max_f1", "max F1", True))


class NoRuns(Exception):
    pass


@dataclass
class Tables:
    frame: pd.DataFrame  # numeric, one row per combiner
    columns: tuple[tuple[str, str, bool], ...]
    markdown: str
    latex: str
    skipped: list[str]
    in_progress: int


def load_runs(folder: Path) -> tuple[pd.DataFrame, list[str], int, tuple[tuple[str, str, bool], ...]]:
    """One row per run with a readable ``metrics.json`` that is not still running.

    Returns the frame, the files skipped (corrupt), the number of runs in progress, and the
    metric columns (as the runs' ``metric_columns`` name them).
    """
    records, skipped, in_progress = [], [], 0
    columns: tuple[tuple[str, str, bool], ...] | None = None
    for path in sorted(Path(folder).glob(f"runs/*/*/{METRICS}")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            status = m["status"]
            record = {"combiner": str(m["combiner"]), "seed": m["seed"], "status": status}
            if status == "completed":
                cols = tuple((str(k), str(h), bool(hi)) for k, h, hi in m.get("metric_columns", DEFAULT_COLUMNS))
                record.update({f"test_{k}": float(m["test"][k]) for k, _, _ in cols})
                record["train_step_s"] = float(m["train_step_s"])
                columns = columns or cols
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"skipping {path}: not a readable mtbench metrics file ({type(e).__name__}: {e})", stacklevel=2)
            skipped.append(str(path))
            continue
        if status == "running":
            in_progress += 1
            continue
        records.append(record)
    return pd.DataFrame.from_records(records), skipped, in_progress, columns or DEFAULT_COLUMNS


def _order_key(name: str) -> tuple[int, str]:
    return (ORDER.index(name), "") if name in ORDER else (len(ORDER), name)


def aggregate(runs: pd.DataFrame, columns=DEFAULT_COLUMNS) -> pd.DataFrame:
    """Numeric table, one row per combiner, in the paper's order."""
    done = runs[runs["status"] == "completed"].copy()
    base = done.loc[done["combiner"] == "baseline", "train_step_s"]
    base_step = base.mean() if len(base) else math.nan
    done["speed"] = base_step / done["train_step_s"]
    rows = []
    names = sorted(runs["combiner"].unique(), key=_order_key)
    for name in names:
        sub = done[done["combiner"] == name]
        row: dict[str, Any] = {"combiner": name, "seeds": len(sub)}
        for col in [f"test_{k}" for k, _, _ in columns] + ["speed", "train_step_s"]:
            vals = sub[col] if col in sub else pd.Series(dtype=float)
            row[f"{col}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
        row["failed"] = int((runs[runs["combiner"] == name]["status"] == "failed").sum())
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _fmt(mean: float, std: float, digits: int = 2, pm: str = " ± ") -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{std:.{digits}f}"


def _cells(row: pd.Series, pm: str, columns) -> list[str]:
    cells = [str(row["combiner"])]
    for key, _, _ in columns:
        cells.append(_fmt(row[f"test_{key}_mean"], row[f"test_{key}_std"], pm=pm))
    cells.append(_fmt(row["speed_mean"], row["speed_std"], pm=pm))
    seeds = str(int(row["seeds"]))
    if row["failed"]:
        seeds += f" (+{int(row['failed'])} failed)"
    cells.append(seeds)
    return cells


def _headers(columns) -> list[str]:
    arrows = {False: "↓", True: "↑"}
    return ["combiner"] + [f"{h} {arrows[hi]}" for _, h, hi in columns] + ["speed vs baseline", "seeds"]


def to_markdown(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = _headers(columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(_cells(row, " ± ", columns)) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = [_tex_escape(h).replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$") for h in _headers(columns)]
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = _cells(row, r" $\pm$ ", columns)
        cells[0] = _tex_escape(cells[0])
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def build_tables(folder: Path | str) -> Tables:
    """Aggregate the runs under ``folder`` and write ``table.{md,csv,tex}`` there."""
    folder = Path(folder)
    runs, skipped, in_progress, columns = load_runs(folder)
    if runs.empty:
        raise NoRuns(f"no finished runs in {folder} (expected {folder}/runs/<combiner>/seed=<seed>/{METRICS})")
    table = aggregate(runs, columns)
    md, tex = to_markdown(table, columns), to_latex(table, columns)
    atomic_write_text(folder / "table.csv", table.to_csv(index=False))
    atomic_write_text(folder / "table.md", md)
    atomic_write_text(folder / "table.tex", tex)
    return Tables(table, columns, md, tex, skipped, in_progress)


def report(folder: Path | str, out=sys.stdout) -> Tables:
    tables = build_tables(folder)
    print(f"\nResults in {folder} (test split, best-validation epoch):\n", file=out)
    print(tables.markdown, file=out)
    notes = []
    if tables.in_progress:
        notes.append(f"{tables.in_progress} run(s) still in progress, left out")
    if tables.skipped:
        notes.append(f"{len(tables.skipped)} unreadable metrics.json skipped")
    if notes:
        print("Note: " + "; ".join(notes) + ".", file=out)
    print(f"Wrote {Path(folder) / 'table.md'}, table.csv, table.tex", file=out)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtbench-table", description="Rebuild the comparison tables from finished runs.")
    parser.add_argument("folders", nargs="+", type=Path, help="results folder(s), e.g. results/shapes40")
    args = parser.parse_args(argv)
    status = 0
    for folder in args.folders:
        if not folder.is_dir():
            print(f"mtbench-table: {folder} is not a folder; give a results folder such as results/shapes40", file=sys.stderr)
            status = 1
            continue
        try:
            report(folder)
        except NoRuns as e:
            print(f"mtbench-table: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate finished runs into the comparison tables.

    mtbench-table results/<name>

reads every ``results/<name>/runs/<combiner>/seed=<seed>/metrics.json`` and writes, there:

- ``table.md``, ``table.csv``, ``table.tex``: one row per combiner; each metric of the runs'
  ``metric_columns`` as mean +- std over seeds (sample std, n-1), the best mean of each column in
  bold (md, tex); the speed relative to the baseline; the number of seeds; and whether the
  combiner's first metric (the error rate) differs from the baseline's beyond the seed-to-seed
  spread (Welch's two-sided t-test, ``significance.py``). Speed vs baseline of a run is the mean
  ``train_step_s`` of the baseline's runs in the same folder divided by the run's own
  ``train_step_s``; the table gives its mean +- std over the combiner's seeds. When the paper's
  numbers for the runs' task exist (``results/paper/<task>.csv``), they stand in a column beside
  each of ours.
- ``per_attribute.{md,csv,tex}`` (tasks with a ``per_attribute.csv`` per run): for every
  attribute, each combiner's test error minus the baseline's (means over seeds, percentage points).
- the plots (``plots.py``), unless told not to.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report.runs import METRICS, atomic_write_text
from mtbench.report.significance import ALPHA, welch_t_test

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

#: header of the significance column (md; the tex header is the same)
SIG_HEADER = f"vs baseline (Welch t-test, p < {ALPHA:g})"

#: the repository's results/ folder, where a source checkout keeps the paper's numbers
SOURCE_RESULTS = Path(__file__).resolve().parents[2] / "results"


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
    paper_file: Path | None = None  # the paper's numbers shown beside ours, if any
    per_attribute: pd.DataFrame | None = None  # numeric, one row per attribute
    written: list[Path] = field(default_factory=list)  # every file written
    runs: pd.DataFrame | None = None  # one row per run (load_runs)


def load_runs(folder: Path) -> tuple[pd.DataFrame, list[str], int, tuple[tuple[str, str, bool], ...]]:
    """One row per run with a readable ``metrics.json`` that is not still running.

    Returns the frame, the files skipped (corrupt), the number of runs in progress, and the
    metric columns (as the runs' ``metric_columns`` name them). The frame has the columns
    ``combiner``, ``seed``, ``status``, ``task``, ``run_dir`` and, for completed runs,
    ``test_<key>`` per metric and ``train_step_s``.
    """
    records, skipped, in_progress = [], [], 0
    columns: tuple[tuple[str, str, bool], ...] | None = None
    for path in sorted(Path(folder).glob(f"runs/*/*/{METRICS}")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            status = m["status"]
            record = {"combiner": str(m["combiner"]), "seed": m["seed"], "status": status}
            record.update(task=str(m.get("task", "")), run_dir=str(path.parent))
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


def ordered(names) -> list[str]:
    """Combiner names in the paper's order, others alphabetically after them."""
    return sorted(set(names), key=_order_key)


def completed_with_speed(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs, with ``speed``: the baseline's mean step time over the run's own."""
    done = runs[runs["status"] == "completed"].copy()
    base = done.loc[done["combiner"] == "baseline", "train_step_s"]
    base_step = base.mean() if len(base) else math.nan
    done["speed"] = base_step / done["train_step_s"]
    return done


def read_paper(path: Path | str) -> pd.DataFrame:
    """The paper's numbers: a CSV with a ``combiner`` column (our names), optionally ``method``
    (the paper's), and one column per metric key (``error_rate``, ``max_f1``, ...) plus ``speed``."""
    paper = pd.read_csv(path)
    if "combiner" not in paper.columns:
        raise ValueError(f"{path}: the paper's numbers need a 'combiner' column (got {', '.join(paper.columns)})")
    paper["combiner"] = paper["combiner"].astype(str).str.strip()
    return paper.set_index("combiner")


def find_paper(folder: Path | str, task: str) -> Path | None:
    """``paper/<task>.csv`` next to the results folder (``results/paper/<task>.csv`` for the
    default ``results_dir``), else in the source checkout's ``results/paper/``."""
    if not task:
        return None
    for candidate in (Path(folder).resolve().parent / "paper" / f"{task}.csv", SOURCE_RESULTS / "paper" / f"{task}.csv"):
        if candidate.is_file():
            return candidate
    return None


def aggregate(runs: pd.DataFrame, columns=DEFAULT_COLUMNS, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numeric table, one row per combiner, in the paper's order.

    Per metric ``k`` (and for ``speed``, ``train_step_s``): ``test_k_mean``, ``test_k_std``; then
    ``seeds``, ``failed``; the Welch t-test of the first metric against the baseline's seeds
    (``diff_vs_baseline``, ``t_vs_baseline``, ``df_vs_baseline``, ``p_vs_baseline``,
    ``significant``: empty when either side has fewer than two seeds); and, given the paper's
    numbers, ``paper_<k>`` and ``paper_speed``.
    """
    done = completed_with_speed(runs)
    primary = f"test_{columns[0][0]}"
    base_vals = done.loc[done["combiner"] == "baseline", primary].dropna().tolist() if primary in done else []
    rows = []
    for name in ordered(runs["combiner"].unique()):
        sub = done[done["combiner"] == name]
        row: dict[str, Any] = {"combiner": name, "seeds": len(sub)}
        for col in [f"test_{k}" for k, _, _ in columns] + ["speed", "train_step_s"]:
            vals = sub[col].dropna() if col in sub else pd.Series(dtype=float)
            row[f"{col}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
        row["failed"] = int((runs[runs["combiner"] == name]["status"] == "failed").sum())
        vals = sub[primary].dropna().tolist() if primary in sub else []
        row.update(diff_vs_baseline=math.nan, t_vs_baseline=math.nan, df_vs_baseline=math.nan, p_vs_baseline=math.nan, significant=None)
        if name != "baseline" and len(vals) >= 2 and len(base_vals) >= 2:
            res = welch_t_test(vals, base_vals)
            row.update(diff_vs_baseline=res.diff, t_vs_baseline=res.t, df_vs_baseline=res.df, p_vs_baseline=res.p, significant=res.significant())
        if paper is not None:
            for key in [k for k, _, _ in columns] + ["speed"]:
                if key in paper.columns:
                    value = paper[key].get(name, math.nan)
                    row[f"paper_{key}"] = float(value) if pd.notna(value) else math.nan
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _fmt(mean: float, std: float, digits: int = 2, pm: str = " ± ") -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{std:.{digits}f}"


def _best(values: pd.Series, higher: bool, digits: int = 2) -> set[int]:
    """Row positions holding the best value as displayed (ties at the shown precision all win)."""
    shown = [round(float(v), digits) if pd.notna(v) else None for v in values]
    valid = [v for v in shown if v is not None]
    if not valid:
        return set()
    target = max(valid) if higher else min(valid)
    return {i for i, v in enumerate(shown) if v == target}


def _sig_cell(row: pd.Series, higher: bool) -> str:
    if row["combiner"] == "baseline":
        return "—"
    p = row.get("p_vs_baseline", math.nan)
    if p is None or pd.isna(p):
        return "n/a"
    if not row["significant"]:
        return f"n.s., p={p:.2f}"
    better = (row["diff_vs_baseline"] > 0) == higher
    return f"{'better' if better else 'worse'}, " + ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def _layout(table: pd.DataFrame, columns) -> list[tuple[str, str | None, bool | None]]:
    """The table's numeric columns, in order: (header, frame column prefix, higher is better).
    Each metric of ours is followed by the paper's, when the frame has it; then speed."""
    arrows = {False: "↓", True: "↑"}
    out: list[tuple[str, str | None, bool | None]] = []
    for key, header, higher in columns:
        out.append((f"{header} {arrows[higher]}", f"test_{key}", higher))
        if f"paper_{key}" in table.columns:
            out.append((f"paper {header}", f"paper_{key}", higher))
    out.append(("speed vs baseline", "speed", True))
    if "paper_speed" in table.columns:
        out.append(("paper speed", "paper_speed", True))
    return out


def _headers(columns, table: pd.DataFrame | None = None) -> list[str]:
    layout = _layout(table if table is not None else pd.DataFrame(), columns)
    return ["combiner"] + [h for h, _, _ in layout] + ["seeds", SIG_HEADER]


def _rows(table: pd.DataFrame, columns, pm: str, bold) -> list[list[str]]:
    layout = _layout(table, columns)
    best = {}
    for _, col, higher in layout:
        values = table[f"{col}_mean"] if f"{col}_mean" in table.columns else table[col]
        best[col] = _best(values, bool(higher))
    rows = []
    for i, (_, row) in enumerate(table.iterrows()):
        cells = [str(row["combiner"])]
        for _, col, _ in layout:
            if f"{col}_mean" in table.columns:
                text = _fmt(row[f"{col}_mean"], row[f"{col}_std"], pm=pm)
            else:
                text = _fmt(row[col], math.nan)
            cells.append(bold(text) if i in best[col] else text)
        seeds = str(int(row["seeds"]))
        if row["failed"]:
            seeds += f" (+{int(row['failed'])} failed)"
        cells.append(seeds)
        cells.append(_sig_cell(row, columns[0][2]))
        rows.append(cells)
    return rows


def to_markdown(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = _headers(columns, table)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _rows(table, columns, " ± ", lambda s: f"**{s}**")]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _tex_text(s: str) -> str:
    return _tex_escape(s).replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("—", "---").replace("<", r"$<$")


def to_latex(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = [_tex_text(h) for h in _headers(columns, table)]
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 2) + "l}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for cells in _rows(table, columns, r" $\pm$ ", lambda s: r"\textbf{" + s + "}"):
        cells = [_tex_text(cells[0])] + cells[1:-1] + [_tex_text(cells[-1])]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# per-attribute table


def load_per_attribute(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (combiner, seed, attribute, base_rate, error) from the completed runs'
    ``per_attribute.csv``; empty when no run has one."""
    parts = []
    for _, run in runs[runs["status"] == "completed"].iterrows():
        path = Path(run["run_dir"]) / "per_attribute.csv"
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path)
            frame = frame[["attribute", "base_rate", "error"]].copy()
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"skipping {path}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        frame.insert(0, "seed", run["seed"])
        frame.insert(0, "combiner", run["combiner"])
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=["combiner", "seed", "attribute", "base_rate", "error"])
    return pd.concat(parts, ignore_index=True)


def per_attribute_table(long: pd.DataFrame) -> pd.DataFrame | None:
    """One row per attribute (in the runs' order): ``base_rate`` (%), ``baseline`` (its test
    error, %, mean over seeds) and, per other combiner, its mean error minus the baseline's
    (percentage points; negative = the combiner helps that attribute). None without baseline runs."""
    if long.empty or "baseline" not in set(long["combiner"]):
        return None
    attributes = list(dict.fromkeys(long["attribute"]))
    means = long.groupby(["combiner", "attribute"])["error"].mean().unstack("attribute")
    base = means.loc["baseline"]
    out = pd.DataFrame({"attribute": attributes})
    out["base_rate"] = [100 * long.loc[long["attribute"] == a, "base_rate"].iloc[0] for a in attributes]
    out["baseline"] = [base[a] for a in attributes]
    for name in ordered(long["combiner"].unique()):
        if name != "baseline":
            out[name] = [means.loc[name, a] - base[a] for a in attributes]
    return out


def _per_attribute_rows(frame: pd.DataFrame, combiners: list[str], minus: str) -> tuple[list[str], list[list[str]]]:
    head = ["attribute", "base rate (%)", "baseline error (%)"] + [f"{c} Δ" for c in combiners]

    def delta(v: float) -> str:
        return "n/a" if pd.isna(v) else f"{'+' if v > 0 else (minus if v < 0 else '')}{abs(v):.2f}"

    rows = []
    for _, r in frame.iterrows():
        rows.append([str(r["attribute"]), f"{r['base_rate']:.1f}", f"{r['baseline']:.2f}"] + [delta(r[c]) for c in combiners])
    rows.append(["helped (Δ < 0)", "", ""] + [str(int((frame[c] < 0).sum())) for c in combiners])
    rows.append(["hurt (Δ > 0)", "", ""] + [str(int((frame[c] > 0).sum())) for c in combiners])
    rows.append(["mean Δ", "", ""] + [delta(frame[c].mean()) for c in combiners])
    return head, rows


def per_attribute_markdown(frame: pd.DataFrame) -> str:
    combiners = [c for c in frame.columns if c not in ("attribute", "base_rate", "baseline")]
    head, rows = _per_attribute_rows(frame, combiners, "-")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def per_attribute_latex(frame: pd.DataFrame) -> str:
    combiners = [c for c in frame.columns if c not in ("attribute", "base_rate", "baseline")]
    head, rows = _per_attribute_rows(frame, combiners, "$-$")
    head = [_tex_escape(h).replace("Δ", r"$\Delta$") for h in head]
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        if i == len(rows) - 3:
            lines.append(r"\midrule")
        first = _tex_escape(r[0]).replace("Δ", r"$\Delta$").replace("<", "$<$").replace(">", "$>$")
        lines.append(" & ".join([first] + r[1:]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def build_tables(folder: Path | str, paper: Path | str | None = None) -> Tables:
    """Aggregate the runs under ``folder`` and write ``table.{md,csv,tex}`` there (and
    ``per_attribute.{md,csv,tex}`` when the runs have per-attribute results). ``paper``: a CSV
    of the paper's numbers; by default ``paper/<task>.csv`` is looked up (``find_paper``)."""
    folder = Path(folder)
    runs, skipped, in_progress, columns = load_runs(folder)
    if runs.empty:
        raise NoRuns(f"no finished runs in {folder} (expected {folder}/runs/<combiner>/seed=<seed>/{METRICS})")
    tasks = sorted(set(runs["task"]) - {""})
    paper_file = Path(paper) if paper is not None else (find_paper(folder, tasks[0]) if len(tasks) == 1 else None)
    paper_frame = None
    if paper_file is not None:
        try:
            paper_frame = read_paper(paper_file)
        except (OSError, ValueError) as e:
            if paper is not None:  # asked for explicitly: an error
                raise
            warnings.warn(f"ignoring the paper's numbers in {paper_file}: {e}", stacklevel=2)
            paper_file = None
    table = aggregate(runs, columns, paper_frame)
    md, tex = to_markdown(table, columns), to_latex(table, columns)
    written = [folder / "table.csv", folder / "table.md", folder / "table.tex"]
    atomic_write_text(folder / "table.csv", table.to_csv(index=False))
    atomic_write_text(folder / "table.md", md)
    atomic_write_text(folder / "table.tex", tex)
    per_attr = per_attribute_table(load_per_attribute(runs))
    if per_attr is not None:
        atomic_write_text(folder / "per_attribute.csv", per_attr.to_csv(index=False))
        atomic_write_text(folder / "per_attribute.md", per_attribute_markdown(per_attr))
        atomic_write_text(folder / "per_attribute.tex", per_attribute_latex(per_attr))
        written += [folder / "per_attribute.csv", folder / "per_attribute.md", folder / "per_attribute.tex"]
    return Tables(table, columns, md, tex, skipped, in_progress, paper_file, per_attr, written, runs)


def significance_note(tables: Tables) -> str:
    key, header, higher = tables.columns[0]
    if tables.frame["p_vs_baseline"].isna().all():
        return f"Significance vs baseline: n/a, it needs at least 2 seeds per combiner (e.g. mtbench -m seed=0,1,2)."
    return (
        f"Significance: Welch's two-sided t-test of each combiner's test {header} over seeds against "
        f"the baseline's, alpha = {ALPHA:g}, not corrected for the number of combiners; "
        f"better/worse = significant, n.s. = not; n/a = fewer than 2 seeds on a side. "
        f"With 3 seeds per combiner only large, consistent differences can come out significant."
    )


def report(folder: Path | str, out=sys.stdout, plots: bool = True, paper: Path | str | None = None) -> Tables:
    """Build and print the tables (and, with ``plots``, draw the plots) of ``folder``."""
    folder = Path(folder)
    tables = build_tables(folder, paper=paper)
    runs = tables.runs
    print(f"\nResults in {folder} (test split, best-validation epoch):\n", file=out)
    print(tables.markdown, file=out)
    notes = []
    if tables.in_progress:
        notes.append(f"{tables.in_progress} run(s) still in progress, left out")
    if tables.skipped:
        notes.append(f"{len(tables.skipped)} unreadable metrics.json skipped")
    if notes:
        print("Note: " + "; ".join(notes) + ".", file=out)
    print(significance_note(tables), file=out)
    if tables.paper_file is not None:
        print(f"Paper columns: the paper's reported numbers, from {tables.paper_file}.", file=out)
    if plots:
        try:
            from mtbench.report.plots import make_plots

            tables.written += make_plots(folder, runs, tables.columns)
        except ImportError as e:
            print(f"Note: no plots ({e}); install matplotlib.", file=out)
        except Exception as e:  # noqa: BLE001 - a plot must not lose the tables of a finished sweep
            print(f"Note: could not draw the plots: {type(e).__name__}: {e}", file=out)
    names = [p.name for p in tables.written]
    names.insert(0, names.pop(names.index("table.md")))
    print(f"Wrote {', '.join(names)} in {folder}", file=out)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtbench-table", description="Rebuild the comparison tables (and plots) from finished runs.")
    parser.add_argument("folders", nargs="+", type=Path, help="results folder(s), e.g. results/shapes40")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument(
        "--paper", type=Path, default=None, help="CSV of the paper's numbers to show beside ours (default: results/paper/<task>.csv when it exists)"
    )
    args = parser.parse_args(argv)
    status = 0
    if args.paper is not None and not args.paper.is_file():
        print(f"mtbench-table: --paper {args.paper} is not a file", file=sys.stderr)
        return 1
    for folder in args.folders:
        if not folder.is_dir():
            print(f"mtbench-table: {folder} is not a folder; give a results folder such as results/shapes40", file=sys.stderr)
            status = 1
            continue
        try:
            report(folder, plots=not args.no_plots, paper=args.paper)
        except NoRuns as e:
            print(f"mtbench-table: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate finished runs into the comparison tables: the ``mtbench-table`` command (:func:`main`).

    mtbench-table results/<name>

reads every ``results/<name>/runs/<combiner>/<variant>/seed=<seed>/metrics.json`` and writes
there (columns, speed, significance and paper numbers are described in docs/guide/tables.md):

- ``table.{md,csv,tex}``: one row per (combiner, variant), combiners in the paper's order, each
  combiner's variants in the order first run (``default`` first); each metric as mean +- std
  over seeds (n-1), the speed relative to the row's reference baseline (the baseline variant
  with the same non-combiner settings, else ``default``; ``load.speed_clock`` picks the clock),
  the seed count, Welch's t-test of the first metric against that baseline
  (``significance.py``), and the paper's numbers beside ours when ``paper/<task>.csv`` (or
  ``--paper FILE``) exists.
- ``per_attribute.{md,csv,tex}`` (tasks with a run-level ``per_attribute.csv``): each
  combiner's test error minus the baseline's, per attribute.
- ``table_tuned.{md,csv,tex}`` (``--select val``, or when a combiner has several variants): per
  combiner the variant best on validation (ties: fewer changed keys, then the earlier variant);
  the test split never chooses.
- with ``--diagnostics``, the mean fraction of conflicting task-gradient pairs; the plots
  (``plots.py``) and, for dense tasks, ``predictions.png`` (``predictions.py``).

A folder whose runs all failed gets a ``table.md`` listing each run's status (``NoRuns``).
Numbers are computed in ``aggregate.py``, formatted in ``formatting.py``, the paper's found in
``published.py``; every name this module had stays importable from here.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.report import speed
from mtbench.report.aggregate import (  # noqa: F401 - re-exported: the table's public names
    _mean_std,
    _welch_fields,
    aggregate,
    has_variants,
    load_per_attribute,
    per_attribute_table,
    swept_keys,
    tuned,
)
from mtbench.report.formatting import (  # noqa: F401 - re-exported
    SIG_HEADER,
    TEX_HEADER,
    _best,
    _flag,
    _fmt,
    _headers,
    _layout,
    _per_attribute_rows,
    _reference_cell,
    _rows,
    _shows_reference,
    _sig_cell,
    _tex_escape,
    _tex_text,
    _tuned_latex,
    _tuned_markdown,
    per_attribute_latex,
    per_attribute_markdown,
    reported_epoch,
    speed_notes,
    status_table,
    to_latex,
    to_markdown,
)
from mtbench.report.load import (  # noqa: F401 - re-exported: the table's public names
    DEFAULT_COLUMNS,
    ORDER,
    _order_key,
    _settings,
    common_settings,
    completed_with_speed,
    label,
    load_runs,
    ordered,
    reference,
    row_keys,
    run_files,
    single_task_runs,
    speed_clock,
)
from mtbench.report.published import PACKAGED_PAPER, find_paper, read_paper  # noqa: F401 - re-exported
from mtbench.report.runs import METRICS, atomic_write_text
from mtbench.report.significance import ALPHA, welch_t_test  # noqa: F401 - re-exported
from mtbench.report.summary import STL, add_summary


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
    tuned: pd.DataFrame | None = None  # one row per combiner, tuned on validation (table_tuned.*)
    tuned_markdown: str | None = None
    paper_note: str = ""  # why there is no paper column, when there is none
    stl_runs: pd.DataFrame | None = None  # the single-task runs (Δm%'s references), not rows
    summary_notes: list[str] = field(default_factory=list)  # what Δm% and mean rank are against


def write_tuned(
    folder: Path | str, runs: pd.DataFrame | None = None, columns=None, stl_runs: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, str, list[Path]]:
    """Write ``table_tuned.{md,csv,tex}`` in ``folder``; the frame, its markdown and the files."""
    folder = Path(folder)
    if runs is None or columns is None:
        runs, _, _, columns = load_runs(folder)
        stl = single_task_runs(runs)
        runs, stl_runs = runs[~stl], runs[stl]
    frame = tuned(runs, columns)
    if frame.empty:
        raise NoRuns(f"no completed run with a validation score in {folder}: nothing to tune")
    add_summary(frame, columns, stl_runs)
    md, tex = _tuned_markdown(frame, columns), _tuned_latex(frame, columns)
    written = [folder / "table_tuned.csv", folder / "table_tuned.md", folder / "table_tuned.tex"]
    atomic_write_text(written[0], frame.to_csv(index=False))
    atomic_write_text(written[1], md)
    atomic_write_text(written[2], TEX_HEADER + tex)
    return frame, md, written


def build_tables(
    folder: Path | str, paper: Path | str | None = None, select: str | None = None, diagnostics: bool = False
) -> Tables:
    """Aggregate the runs under ``folder`` and write ``table.{md,csv,tex}`` there (and
    ``per_attribute.{md,csv,tex}`` when the runs have per-attribute results; and
    ``table_tuned.{md,csv,tex}`` with ``select="val"`` or when some combiner has several
    variants). ``paper``: a CSV of the paper's numbers; by default ``paper/<task>.csv`` is looked
    up (``find_paper``). ``diagnostics``: a column of the mean conflicting-pair fraction
    (``report/diagnostics.py``). Without a completed run, ``table.md`` lists the runs' statuses and
    :class:`NoRuns` is raised."""
    folder = Path(folder)
    runs, skipped, in_progress, columns = load_runs(folder)
    stl = single_task_runs(runs)
    runs, stl_runs = runs[~stl].reset_index(drop=True), runs[stl].reset_index(drop=True)
    if runs.empty:
        raise NoRuns(
            f"no finished runs in {folder} (expected {folder}/runs/<combiner>/<variant>/seed=<seed>/{METRICS})"
        )
    if not (runs["status"] == "completed").any():
        atomic_write_text(folder / "table.md", status_table(runs))
        counts = runs["status"].value_counts()
        shown = ", ".join(f"{n} {s}" for s, n in counts.items())
        raise NoRuns(f"no completed run in {folder} ({shown}); the runs' statuses are in {folder / 'table.md'}")
    tasks = sorted(set(runs["task"]) - {""})
    paper_file = Path(paper) if paper is not None else (find_paper(folder, tasks[0]) if len(tasks) == 1 else None)
    paper_frame = None
    if paper_file is None:
        paper_note = (
            f"the runs are of several tasks ({', '.join(tasks)})"
            if len(tasks) > 1
            else f"the paper reports no numbers for task {tasks[0]} (no paper/{tasks[0]}.csv; --paper FILE gives some)"
            if tasks
            else "the runs do not name their task (--paper FILE gives the numbers)"
        )
    if paper_file is not None:
        try:
            paper_frame = read_paper(paper_file)
        except MtbenchError as e:
            if paper is not None:  # asked for explicitly: an error
                raise
            warnings.warn(f"ignoring the paper's numbers in {paper_file}: {e}", stacklevel=2)
            paper_note = f"{paper_file} is not readable ({e})"
            paper_file = None
    shown_paper = paper_frame
    if paper_frame is not None and not set(paper_frame.index) - {STL}:  # only a single-task row
        shown_paper = None
        paper_note = f"{paper_file} has only the published single-task row (used for Δm%)"
    table = aggregate(runs, columns, shown_paper)
    # the speed column: the sweep-end interleaved measurement where there is one (speed.json)
    table = speed.apply(table, folder)
    summary_notes = add_summary(table, columns, stl_runs, paper_frame, paper_file)
    epoch = reported_epoch(runs)
    notes = (
        (speed.notes(folder) or speed_notes(runs, table))
        + summary_notes
        + ([f"Reported epoch: {epoch}."] if epoch else [])
    )
    if diagnostics:
        from mtbench.report.diagnostics import add_conflict

        notes.append(add_conflict(table, runs))
    md = to_markdown(table, columns) + "\n" + "".join(f"{line}\n" for line in notes)
    tex = to_latex(table, columns) + "".join(f"% {line}\n" for line in notes)
    written = [folder / "table.csv", folder / "table.md", folder / "table.tex"]
    atomic_write_text(folder / "table.csv", table.to_csv(index=False))
    atomic_write_text(folder / "table.md", md)
    atomic_write_text(folder / "table.tex", TEX_HEADER + tex)
    per_attr = per_attribute_table(load_per_attribute(runs), runs)
    if per_attr is not None:
        atomic_write_text(folder / "per_attribute.csv", per_attr.to_csv(index=False))
        atomic_write_text(folder / "per_attribute.md", per_attribute_markdown(per_attr))
        atomic_write_text(folder / "per_attribute.tex", TEX_HEADER + per_attribute_latex(per_attr))
        written += [folder / "per_attribute.csv", folder / "per_attribute.md", folder / "per_attribute.tex"]
    tables = Tables(table, columns, md, tex, skipped, in_progress, paper_file, per_attr, written, runs)
    tables.stl_runs, tables.summary_notes = stl_runs, summary_notes
    tables.paper_note = "" if shown_paper is not None else paper_note
    if shown_paper is None:
        tables.paper_file = None
    if select == "val" or has_variants(runs):
        tables.tuned, tables.tuned_markdown, files = write_tuned(folder, runs, columns, stl_runs)
        tables.written += files
    return tables


def significance_note(tables: Tables) -> str:
    key, header, higher = tables.columns[0]
    if tables.frame["p_vs_baseline"].isna().all():
        return "Significance vs baseline: n/a, it needs at least 2 seeds per combiner (e.g. mtbench -m seed=0,1,2)."
    return (
        f"Significance: Welch's two-sided t-test of each combiner's test {header} over seeds against "
        f"the baseline's, alpha = {ALPHA:g}, not corrected for the number of combiners; "
        f"better/worse = significant, n.s. = not; n/a = fewer than 2 seeds on a side. "
        f"With 3 seeds per combiner only large, consistent differences can come out significant."
    )


def tuned_note(tables: Tables) -> str:
    frame = tables.tuned
    assert frame is not None
    metric = ", ".join(dict.fromkeys(frame["select_metric"]))
    return (
        f"Tuned on validation (table_tuned.*): per combiner, the variant with the best mean validation {metric} "
        f"over its seeds (ties: fewer changed keys); its test metrics; speed and the t-test against the tuned baseline. "
        f"The test split chose nothing."
    )


def report(
    folder: Path | str,
    out=sys.stdout,
    plots: bool = True,
    paper: Path | str | None = None,
    select: str | None = None,
    diagnostics: bool = False,
) -> Tables:
    """Build and print the tables (and, with ``plots``, draw the plots) of ``folder``."""
    folder = Path(folder)
    tables = build_tables(folder, paper=paper, select=select, diagnostics=diagnostics)
    runs = tables.runs
    epoch = reported_epoch(runs) if runs is not None else ""
    shown = "mean of the last epochs" if epoch.startswith("the mean") else "best-validation epoch"
    shown = "reported epochs differ" if epoch.startswith("mixed") else shown
    print(f"\nResults in {folder} (test split, {shown}):\n", file=out)
    print(tables.markdown, file=out)
    notes = []
    if tables.in_progress:
        notes.append(f"{tables.in_progress} run(s) still in progress, left out")
    if tables.skipped:
        notes.append(f"{len(tables.skipped)} unreadable metrics.json skipped")
    if notes:
        print("Note: " + "; ".join(notes) + ".", file=out)
    common = common_settings(runs) if runs is not None else {}
    if common:
        print("Settings of every row: " + ", ".join(f"{k}={v}" for k, v in common.items()) + ".", file=out)
    if _shows_reference(tables.frame):
        print(
            "Compared with: each row's speed and t-test are against the baseline run with the same non-combiner settings, else the default baseline.",
            file=out,
        )
    print(significance_note(tables), file=out)
    if tables.paper_file is not None:
        print(f"Paper columns: the paper's reported numbers, from {tables.paper_file}.", file=out)
    elif tables.paper_note:
        print(f"Paper columns: none, {tables.paper_note}.", file=out)
    if tables.tuned is not None and tables.tuned_markdown is not None:
        print(f"\nTuned on validation, {folder}:\n", file=out)
        print(tables.tuned_markdown, file=out)
        print(tuned_note(tables), file=out)
    if plots:
        try:
            from mtbench.report.plots import make_plots

            tables.written += make_plots(folder, runs, tables.columns)
            from mtbench.report.predictions import draw_predictions

            tables.written += draw_predictions(folder, runs)
        except ImportError as e:
            print(f"Note: no plots ({e}); install matplotlib.", file=out)
        except Exception as e:  # noqa: BLE001 - a plot must not lose the tables of a finished sweep
            print(f"Note: could not draw the plots: {type(e).__name__}: {e}", file=out)
    names = [p.name for p in tables.written]
    names.insert(0, names.pop(names.index("table.md")))
    print(f"Wrote {', '.join(names)} in {folder}", file=out)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtbench-table", description="Rebuild the comparison tables (and plots) from finished runs."
    )
    parser.add_argument("folders", nargs="+", type=Path, help="results folder(s), e.g. results/shapes40")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument(
        "--select",
        choices=["val"],
        default=None,
        help="also write table_tuned.{md,csv,tex}: per combiner, the variant best on validation (the test split never chooses)",
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=None,
        help="CSV of the paper's numbers to show beside ours (default: paper/<task>.csv next to the results folder, else the packaged numbers)",
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="add the mean fraction of conflicting task-gradient pairs per row (runs trained with trainer.diagnostics=true)",
    )
    args = parser.parse_args(argv)
    status = 0
    if args.paper is not None and not args.paper.is_file():
        print(f"mtbench-table: --paper {args.paper} is not a file", file=sys.stderr)
        return 1
    for folder in args.folders:
        if not folder.is_dir():
            print(
                f"mtbench-table: {folder} is not a folder; give a results folder such as results/shapes40",
                file=sys.stderr,
            )
            status = 1
            continue
        try:
            report(folder, plots=not args.no_plots, paper=args.paper, select=args.select, diagnostics=args.diagnostics)
        except NoRuns as e:
            print(f"mtbench-table: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate finished runs into the comparison tables.

    mtbench-table results/<name>

reads every ``results/<name>/runs/<combiner>/<variant>/seed=<seed>/metrics.json`` and writes, there:

- ``table.md``, ``table.csv``, ``table.tex``: one row per (combiner, variant), combiners in the
  paper's order, the variants of each in the order they were first run (``default`` first); the
  row label is the combiner and, unless ``default``, its settings. ``table.csv`` also has the
  columns ``combiner``, ``variant`` and one per swept key. Each metric of the runs'
  ``metric_columns`` as mean +- std over seeds (sample std, n-1), the best mean of each column in
  bold (md, tex); the speed relative to the baseline; the number of seeds; and whether the
  combiner's first metric (the error rate) differs from the baseline's beyond the seed-to-seed
  spread (Welch's two-sided t-test, ``significance.py``). Speed vs baseline of a run is the mean
  step time of its reference baseline runs divided by the run's own (on a CPU the process CPU
  time per step, ``train_step_cpu_s``, which other processes cannot inflate; else, and for
  folders with older runs that lack it, ``train_step_s``: ``load.speed_clock``); the table gives
  its mean +- std over the row's seeds, 1.00 for the reference baseline itself (its step time
  mean +- std is a footnote under the table), and a † on rows whose runs saw a machine load
  above its cores (footnote, ``speed_notes``). The reference of a row (for the speed and the
  t-test) is the baseline variant with the same non-combiner settings (the same ``trainer.lr``,
  say) when there is one, else the ``default`` baseline; a ``compared with`` column names it
  whenever a table has more than one baseline variant. When the paper's
  numbers for the runs' task exist (``paper/<task>.csv`` next to the results folder, else the
  package's ``mtbench/report/paper/<task>.csv``; ``--paper FILE``), they stand in a column beside
  each of ours; the notes say why when there is no such column.
- ``per_attribute.{md,csv,tex}`` (tasks with a ``per_attribute.csv`` per run): for every
  attribute, each combiner's test error minus the baseline's (means over seeds, percentage points).
- ``table_tuned.{md,csv,tex}`` (``--select val``, and whenever some combiner has more than one
  variant): one row per combiner, the variant with the best mean validation score over seeds
  (the runs' select metric; ties: the fewer changed keys, then the earlier variant) with its
  test metrics, its settings and how many variants were tried. The test split never chooses.
- the plots (``plots.py``), unless told not to.

A folder whose runs all failed gets ``table.md`` listing each run's status instead (``NoRuns``).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report import speed
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
    speed_clock,
)
from mtbench.report.runs import METRICS, atomic_write_text
from mtbench.report.significance import ALPHA, welch_t_test

#: header of the significance column (md; the tex header is the same)
SIG_HEADER = f"vs baseline (Welch t-test, p < {ALPHA:g})"

#: the paper's reported numbers shipped inside the package (``paper/<task>.csv``, package data)
PACKAGED_PAPER = Path(__file__).resolve().parent / "paper"


#: first line of every ``.tex`` table written: the rules are booktabs' (``\toprule`` ...)
TEX_HEADER = "% mtbench table: needs \\usepackage{booktabs} in the preamble (\\toprule, \\midrule, \\bottomrule)\n"


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
    default ``results_dir``: your own numbers), else the package's (``mtbench/report/paper/``)."""
    if not task:
        return None
    for candidate in (Path(folder).resolve().parent / "paper" / f"{task}.csv", PACKAGED_PAPER / f"{task}.csv"):
        if candidate.is_file():
            return candidate
    return None


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """Every key some row's variant sets, sorted."""
    return sorted({k for o in runs["overrides"] for k in (o or {})}) if "overrides" in runs else []


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (NaN where too few values)."""
    vals = values.dropna()
    return (vals.mean() if len(vals) else math.nan), (vals.std(ddof=1) if len(vals) > 1 else math.nan)


def _welch_fields(vals: list[float], base_vals: list[float], compare: bool) -> dict[str, Any]:
    """The table's t-test columns against the baseline's seeds: empty unless ``compare`` and
    both sides have at least two values."""
    if not (compare and len(vals) >= 2 and len(base_vals) >= 2):
        return dict(
            diff_vs_baseline=math.nan,
            t_vs_baseline=math.nan,
            df_vs_baseline=math.nan,
            p_vs_baseline=math.nan,
            significant=None,
        )
    res = welch_t_test(vals, base_vals)
    return dict(
        diff_vs_baseline=res.diff,
        t_vs_baseline=res.t,
        df_vs_baseline=res.df,
        p_vs_baseline=res.p,
        significant=res.significant(),
    )


def aggregate(runs: pd.DataFrame, columns=DEFAULT_COLUMNS, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numeric table, one row per (combiner, variant), in the order of :func:`row_keys`.

    Columns: ``combiner``, ``variant``, ``label``, one per swept key (the row's value, empty when
    it does not set it), ``reference`` (the baseline variant it is compared with); per metric
    ``k`` (and for ``speed``, ``train_step_s``): ``test_k_mean``, ``test_k_std``; then ``seeds``,
    ``failed``; the Welch t-test of the first metric against the reference baseline's seeds
    (``diff_vs_baseline``, ``t_vs_baseline``, ``df_vs_baseline``, ``p_vs_baseline``,
    ``significant``: empty when either side has fewer than two seeds); and, given the paper's
    numbers, ``paper_<k>`` and ``paper_speed`` (the paper's number for the method, on each of
    its rows).
    """
    done = completed_with_speed(runs)
    primary = f"test_{columns[0][0]}"
    keys = swept_keys(runs)
    rows = []
    for name, variant in row_keys(runs):
        sub = done[(done["combiner"] == name) & (done["variant"] == variant)]
        settings = _settings(runs, name, variant)
        mine = runs[(runs["combiner"] == name) & (runs["variant"] == variant)]
        row: dict[str, Any] = {
            "combiner": name,
            "variant": variant,
            "label": str(mine["label"].iloc[0]) if "label" in mine else name,
        }
        row.update({k: settings.get(k, "") for k in keys})
        ref = reference(runs, name, variant)
        row["reference"] = ref or ""
        row["seeds"] = len(sub)
        for col in [f"test_{k}" for k, _, _ in columns] + ["speed", "train_step_s", "train_step_cpu_s", "step_s"]:
            row[f"{col}_mean"], row[f"{col}_std"] = _mean_std(sub.get(col, pd.Series(dtype=float)))
        if (name, variant) == ("baseline", ref) and len(sub):  # 1.00 by definition; its spread: step_s_std
            row["speed_mean"], row["speed_std"] = 1.0, math.nan
        row["overloaded"] = bool(sub["overloaded"].any()) if "overloaded" in sub else False
        row["load_max"] = (
            float(sub["load_max"].max()) if "load_max" in sub and sub["load_max"].notna().any() else math.nan
        )
        row["failed"] = int((mine["status"] == "failed").sum())
        vals = sub[primary].dropna().tolist() if primary in sub else []
        base = done[(done["combiner"] == "baseline") & (done["variant"] == ref)]
        base_vals = base[primary].dropna().tolist() if primary in base else []
        row.update(_welch_fields(vals, base_vals, compare=(name, variant) != ("baseline", ref)))
        if paper is not None:
            for key in [k for k, _, _ in columns] + ["speed"]:
                if key in paper.columns:
                    value = paper[key].get(name, math.nan)
                    row[f"paper_{key}"] = float(value) if pd.notna(value) else math.nan
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _shows_reference(table: pd.DataFrame) -> bool:
    """Whether the table needs its ``compared with`` column: only with more than one baseline
    variant (with one, every row is compared with it: docs/guide/sweeps.md)."""
    if "reference" not in table.columns:
        return False
    baselines = table.loc[table["combiner"] == "baseline", "variant"]
    return len(baselines) > 1


def _reference_cell(row: pd.Series, runs_label) -> str:
    ref = row.get("reference") or ""
    if not ref:
        return "n/a"
    if row["combiner"] == "baseline" and row["variant"] == ref:
        return "itself"
    return runs_label(ref)


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


def _flag(value) -> bool:
    """A yes/no cell of a frame (a missing one is no)."""
    return bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False


def _sig_cell(row: pd.Series, higher: bool) -> str:
    if row["combiner"] == "baseline" and row.get("variant", "default") == (row.get("reference") or "default"):
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
    table = table if table is not None else pd.DataFrame()
    layout = _layout(table, columns)
    extra = ["compared with"] if _shows_reference(table) else []
    return ["combiner"] + [h for h, _, _ in layout] + ["seeds"] + extra + [SIG_HEADER]


def _rows(table: pd.DataFrame, columns, pm: str, bold) -> list[list[str]]:
    layout = _layout(table, columns)
    best = {}
    for _, col, higher in layout:
        values = table[f"{col}_mean"] if f"{col}_mean" in table.columns else table[col]
        best[col] = _best(values, bool(higher))
        if col == "speed":  # -- speed bolding rule (mtbench/report/speed.py): outside the baseline's spread --
            best[col] = speed.boldable(table, best[col])
    rows = []
    labels = (
        {(r["combiner"], r["variant"]): r["label"] for _, r in table.iterrows()} if "label" in table.columns else {}
    )
    shows_reference = _shows_reference(table)
    for i, (_, row) in enumerate(table.iterrows()):
        cells = [str(row.get("label", row["combiner"]))]
        for _, col, _ in layout:
            if f"{col}_mean" in table.columns:
                text = _fmt(row[f"{col}_mean"], row[f"{col}_std"], pm=pm)
            else:
                text = _fmt(row[col], math.nan)
            text = bold(text) if i in best[col] else text
            if col == "speed" and _flag(row.get("overloaded")) and not _flag(row.get("speed_measured")):
                text += " †"  # the machine's load exceeded its cores during these runs (speed_notes)
            cells.append(text)
        seeds = str(int(row["seeds"]))
        if row["failed"]:
            seeds += f" (+{int(row['failed'])} failed)"
        cells.append(seeds)
        if shows_reference:
            cells.append(_reference_cell(row, lambda v: labels.get(("baseline", v), f"baseline ({v})")))
        cells.append(_sig_cell(row, columns[0][2]))
        rows.append(cells)
    return rows


def to_markdown(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = _headers(columns, table)
    numeric = len(_layout(table, columns)) + 1  # the metric columns and seeds
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * numeric + ["---"] * (len(head) - 1 - numeric)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _rows(table, columns, " ± ", lambda s: f"**{s}**")]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _tex_text(s: str) -> str:
    return (
        _tex_escape(s)
        .replace("↓", r"$\downarrow$")
        .replace("↑", r"$\uparrow$")
        .replace("—", "---")
        .replace("<", r"$<$")
    )


def to_latex(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = [_tex_text(h) for h in _headers(columns, table)]
    n_numeric = len(_layout(table, columns)) + 1  # the metric columns and seeds
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 2) + "l}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for cells in _rows(table, columns, r" $\pm$ ", lambda s: r"\textbf{" + s + "}"):
        cells = (
            [_tex_text(cells[0])]
            + [c if i < n_numeric else _tex_text(c) for i, c in enumerate(cells[1:-1])]
            + [_tex_text(cells[-1])]
        )
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# per-attribute table


def load_per_attribute(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (combiner, variant, seed, attribute, base_rate, error) from the completed runs'
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
        frame.insert(0, "variant", run.get("variant", "default"))
        frame.insert(0, "combiner", run["combiner"])
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=["combiner", "variant", "seed", "attribute", "base_rate", "error"])
    return pd.concat(parts, ignore_index=True)


def per_attribute_table(long: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """One row per attribute (in the runs' order): ``base_rate`` (%), ``baseline`` (the default
    baseline's test error, %, mean over seeds; the first baseline variant without a default) and,
    per other row of the main table (by its label), its mean error minus its reference
    baseline's (percentage points; negative = the row helps that attribute). None without
    baseline runs."""
    if long.empty or "baseline" not in set(long["combiner"]):
        return None
    if "variant" not in long.columns:
        long = long.assign(variant="default")
    if runs is None:  # only the long frame: every row is a completed run without settings
        runs = long.drop_duplicates(["combiner", "variant", "seed"])[["combiner", "variant", "seed"]].copy()
        runs["status"], runs["started_at"] = "completed", ""
        runs["overrides"] = [{} for _ in range(len(runs))]
    attributes = list(dict.fromkeys(long["attribute"]))
    means = long.groupby(["combiner", "variant", "attribute"])["error"].mean()
    base_variants = list(dict.fromkeys(long.loc[long["combiner"] == "baseline", "variant"]))
    shown_base = "default" if "default" in base_variants else base_variants[0]
    out = pd.DataFrame({"attribute": attributes})
    out["base_rate"] = [100 * long.loc[long["attribute"] == a, "base_rate"].iloc[0] for a in attributes]
    out["baseline"] = [means[("baseline", shown_base, a)] for a in attributes]
    present = set(zip(long["combiner"], long["variant"]))
    for name, variant in row_keys(runs):
        if (name, variant) not in present or (name, variant) == ("baseline", shown_base):
            continue
        ref = reference(runs, name, variant)
        if ref is None or ("baseline", ref) not in present or (name, variant) == ("baseline", ref):
            continue
        mine = runs[(runs["combiner"] == name) & (runs["variant"] == variant)]
        column = str(mine["label"].iloc[0]) if "label" in mine and len(mine) else label(name, variant)
        out[column] = [means[(name, variant, a)] - means[("baseline", ref, a)] for a in attributes]
    return out


def _per_attribute_rows(frame: pd.DataFrame, combiners: list[str], minus: str) -> tuple[list[str], list[list[str]]]:
    head = ["attribute", "base rate (%)", "baseline error (%)"] + [f"{c} Δ" for c in combiners]

    def delta(v: float) -> str:
        return "n/a" if pd.isna(v) else f"{'+' if v > 0 else (minus if v < 0 else '')}{abs(v):.2f}"

    rows = []
    for _, r in frame.iterrows():
        rows.append(
            [str(r["attribute"]), f"{r['base_rate']:.1f}", f"{r['baseline']:.2f}"] + [delta(r[c]) for c in combiners]
        )
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


def status_table(runs: pd.DataFrame) -> str:
    """Markdown: one line per run with its status (and reason), for a folder without a completed run."""
    lines = ["| combiner | variant | seed | status | reason |", "|---|---|---:|---|---|"]
    for _, r in runs.sort_values(["combiner", "variant", "seed"], key=lambda c: c.map(str)).iterrows():
        reason = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['combiner']} | {r['variant']} | {r['seed']} | {r['status']} | {reason} |")
    return "\n".join(lines) + "\n"


def tuned(runs: pd.DataFrame, columns=DEFAULT_COLUMNS) -> pd.DataFrame:
    """One row per combiner: its variant with the best mean validation score over seeds (the
    runs' select metric; ties: the fewer changed keys, then the earlier variant), with that
    variant's test metrics, ``settings``, ``variants_tried``, ``val_mean``; ``speed`` and the
    Welch t-test (columns as in :func:`aggregate`) are against the tuned baseline. The test
    split never chooses."""
    done = runs[runs["status"] == "completed"]
    keys = row_keys(done)
    common = common_settings(runs)
    chosen: dict[str, tuple[str, float, int, int]] = {}  # variant, score (lower is better), keys, rank
    tried: dict[str, int] = {}
    for rank, (name, variant) in enumerate(keys):
        sub = done[(done["combiner"] == name) & (done["variant"] == variant)]
        val = sub["val_select"].dropna()
        if val.empty:
            continue
        tried[name] = tried.get(name, 0) + 1
        higher = bool(sub["select_higher"].iloc[0])
        score = -val.mean() if higher else val.mean()  # lower is better
        n_keys = len(_settings(done, name, variant))
        best = chosen.get(name)
        if best is None or (score, n_keys, rank) < best[1:]:
            chosen[name] = (variant, score, n_keys, rank)
    primary = f"test_{columns[0][0]}"
    base_variant = chosen.get("baseline", (None,))[0]
    base = (
        done[(done["combiner"] == "baseline") & (done["variant"] == base_variant)] if base_variant else done.iloc[0:0]
    )
    step_col = "train_step_cpu_s" if speed_clock(done) == "cpu" else "train_step_s"
    base_step = base[step_col].mean() if len(base) else math.nan
    base_vals = base[primary].dropna().tolist() if primary in base else []
    rows = []
    for name in ordered(chosen):
        variant = chosen[name][0]
        sub = done[(done["combiner"] == name) & (done["variant"] == variant)]
        settings = _settings(done, name, variant)
        row: dict[str, Any] = {"combiner": name, "variant": variant, "label": name, "reference": base_variant or ""}
        row["settings"] = ", ".join(f"{k}={v}" for k, v in settings.items() if common.get(k) != v) or "default"
        row.update({f"setting:{k}": v for k, v in settings.items()})
        row["variants_tried"] = tried[name]
        row["select_metric"] = str(sub["select_metric"].iloc[0])
        row["val_mean"] = float(sub["val_select"].mean())
        row["seeds"] = len(sub)
        for col in [f"test_{k}" for k, _, _ in columns]:
            row[f"{col}_mean"], row[f"{col}_std"] = _mean_std(sub.get(col, pd.Series(dtype=float)))
        row["speed_mean"], row["speed_std"] = _mean_std(base_step / sub[step_col])
        if name == "baseline":  # 1.00 by definition
            row["speed_mean"], row["speed_std"] = 1.0, math.nan
        row["overloaded"] = bool(sub["overloaded"].any()) if "overloaded" in sub else False
        row["failed"] = 0
        row.update(_welch_fields(sub[primary].dropna().tolist(), base_vals, compare=name != "baseline"))
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _tuned_markdown(frame: pd.DataFrame, columns) -> str:
    body = to_markdown(frame.drop(columns="reference").assign(variant="default"), columns).splitlines()
    head = body[0][:-1] + "| settings chosen on validation | variants tried |"
    rule = body[1] + "---|---:|"
    rows = [
        line[:-1] + f"| {r['settings']} | {int(r['variants_tried'])} |"
        for line, (_, r) in zip(body[2:], frame.iterrows())
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def _tuned_latex(frame: pd.DataFrame, columns) -> str:
    lines = to_latex(frame.drop(columns="reference").assign(variant="default"), columns).splitlines()
    lines[0] = lines[0][:-1] + "ll}"
    lines[2] = lines[2][: -len(r" \\")] + r" & settings chosen on validation & variants tried \\"
    body = [i for i, line in enumerate(lines) if line.endswith(r"\\")][1:]
    for i, (_, r) in zip(body, frame.iterrows()):
        lines[i] = lines[i][: -len(r" \\")] + f" & {_tex_escape(r['settings'])} & {int(r['variants_tried'])}" + r" \\"
    return "\n".join(lines) + "\n"


def write_tuned(
    folder: Path | str, runs: pd.DataFrame | None = None, columns=None
) -> tuple[pd.DataFrame, str, list[Path]]:
    """Write ``table_tuned.{md,csv,tex}`` in ``folder``; the frame, its markdown and the files."""
    folder = Path(folder)
    if runs is None or columns is None:
        runs, _, _, columns = load_runs(folder)
    frame = tuned(runs, columns)
    if frame.empty:
        raise NoRuns(f"no completed run with a validation score in {folder}: nothing to tune")
    md, tex = _tuned_markdown(frame, columns), _tuned_latex(frame, columns)
    written = [folder / "table_tuned.csv", folder / "table_tuned.md", folder / "table_tuned.tex"]
    atomic_write_text(written[0], frame.to_csv(index=False))
    atomic_write_text(written[1], md)
    atomic_write_text(written[2], TEX_HEADER + tex)
    return frame, md, written


def has_variants(runs: pd.DataFrame) -> bool:
    """Whether some combiner has more than one variant among the completed runs."""
    done = runs[runs["status"] == "completed"] if not runs.empty else runs
    return bool(len(done)) and bool((done.groupby("combiner")["variant"].nunique() > 1).any())


def build_tables(folder: Path | str, paper: Path | str | None = None, select: str | None = None) -> Tables:
    """Aggregate the runs under ``folder`` and write ``table.{md,csv,tex}`` there (and
    ``per_attribute.{md,csv,tex}`` when the runs have per-attribute results; and
    ``table_tuned.{md,csv,tex}`` with ``select="val"`` or when some combiner has several
    variants). ``paper``: a CSV of the paper's numbers; by default ``paper/<task>.csv`` is looked
    up (``find_paper``). Without a completed run, ``table.md`` lists the runs' statuses and
    :class:`NoRuns` is raised."""
    folder = Path(folder)
    runs, skipped, in_progress, columns = load_runs(folder)
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
        except (OSError, ValueError) as e:
            if paper is not None:  # asked for explicitly: an error
                raise
            warnings.warn(f"ignoring the paper's numbers in {paper_file}: {e}", stacklevel=2)
            paper_note = f"{paper_file} is not readable ({e})"
            paper_file = None
    table = aggregate(runs, columns, paper_frame)
    # -- speed column source (mtbench/report/speed.py): the sweep-end interleaved measurement --
    table = speed.apply(table, folder)
    notes = speed.notes(folder) or speed_notes(runs, table)
    # -- end speed column source --
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
    tables.paper_note = "" if paper_file is not None else paper_note
    if select == "val" or has_variants(runs):
        tables.tuned, tables.tuned_markdown, files = write_tuned(folder, runs, columns)
        tables.written += files
    return tables


def speed_notes(runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The table's footnotes on speed: which clock the ratios come from and the baseline's own
    step time (its speed is 1.00 by definition; its spread is shown here), and, when the
    machine's load exceeded its cores during some runs, what the † marks."""
    done = runs[runs["status"] == "completed"] if len(runs) else runs
    clock = speed_clock(done)
    devices = set(done["device"]) if "device" in done else set()
    if clock == "cpu":
        how = "process CPU time per training step (the time the run's threads computed: other processes on the machine cannot inflate it; the wall time stays in metrics.json)"
    elif devices and all(d.startswith("cuda") for d in devices):
        how = "the GPU's time per training step (CUDA events around each step)"
    else:
        missing = int(done["train_step_cpu_s"].isna().sum()) if "train_step_cpu_s" in done else len(done)
        how = (
            f"train_step_s, the wall (on a GPU: device) time per training step, because {missing} of {len(done)} runs have no CPU time "
            "(made on a GPU, or before mtbench recorded it); on a shared CPU wall times move with the machine's load"
        )
    unit = "CPU" if clock == "cpu" else "wall"
    bases = []
    for _, row in table[table["combiner"] == "baseline"].iterrows() if "combiner" in table else []:
        mean, std = row.get("step_s_mean", math.nan), row.get("step_s_std", math.nan)
        if mean is None or pd.isna(mean):
            continue
        spread = f"{1000 * mean:.2f} ± {1000 * std:.2f} ms" if pd.notna(std) else f"{1000 * mean:.2f} ms"
        name = (
            ""
            if row["variant"] == "default" or len(table[table["combiner"] == "baseline"]) == 1
            else f" ({row['label']})"
        )
        bases.append(f"baseline{name} step time {spread} ({unit} time, {int(row['seeds'])} seed(s))")
    lines = [
        f"Speed vs baseline: the baseline's mean step time over each run's, from {how}; the baseline is 1.00 by definition"
        + (", " + "; ".join(bases) if bases else "")
        + "."
    ]
    if "overloaded" in done and bool(done["overloaded"].any()):
        cores = done["cores"].dropna()
        n = int(cores.max()) if len(cores) else "its"
        worst = done["load_max"].max()
        hit = int(done["overloaded"].sum())
        lines.append(
            f"†: the machine's 1-minute load average exceeded its {n} cores during {hit} of {len(done)} runs (up to {worst:.1f}): "
            + (
                "their wall times are inflated; the CPU-time speed is far less affected, but cache and memory contention remain."
                if clock == "cpu"
                else "their wall times, and so these speed ratios, are inflated; re-run on an idle machine to compare speeds."
            )
        )
    return lines


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
    folder: Path | str, out=sys.stdout, plots: bool = True, paper: Path | str | None = None, select: str | None = None
) -> Tables:
    """Build and print the tables (and, with ``plots``, draw the plots) of ``folder``."""
    folder = Path(folder)
    tables = build_tables(folder, paper=paper, select=select)
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
            report(folder, plots=not args.no_plots, paper=args.paper, select=args.select)
        except NoRuns as e:
            print(f"mtbench-table: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

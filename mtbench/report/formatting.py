"""The tables as text: markdown and LaTeX (booktabs) of the main, per-attribute and tuned
tables, the status table of a folder without a completed run, and the notes printed under them."""

from __future__ import annotations

import math

import pandas as pd

from mtbench.report import speed
from mtbench.report.load import DEFAULT_COLUMNS, speed_clock
from mtbench.report.significance import ALPHA

#: header of the significance column (md; the tex header is the same)
SIG_HEADER = f"vs baseline (Welch t-test, p < {ALPHA:g})"


#: first line of every ``.tex`` table written: the rules are booktabs' (``\toprule`` ...)
TEX_HEADER = "% mtbench table: needs \\usepackage{booktabs} in the preamble (\\toprule, \\midrule, \\bottomrule)\n"


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
    if "conflict_frac_mean" in table.columns:  # mtbench-table --diagnostics (report/diagnostics.py)
        out.append(("conflict frac", "conflict_frac", None))
    return out


def _summary_layout(table: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The summary columns after ``seeds`` (``summary.add_summary``): Δm% and mean rank, ours
    and, when the paper's numbers are shown, the paper's; lower is better for all four."""
    shown = [
        ("Δm% ↓", "delta_m"),
        ("paper Δm%", "paper_delta_m"),
        ("mean rank ↓", "mean_rank"),
        ("paper mean rank", "paper_mean_rank"),
    ]
    return [(h, c, False) for h, c in shown if c in table.columns]


def _headers(columns, table: pd.DataFrame | None = None) -> list[str]:
    table = table if table is not None else pd.DataFrame()
    layout = _layout(table, columns)
    summary = [h for h, _, _ in _summary_layout(table)]
    extra = ["compared with"] if _shows_reference(table) else []
    return ["combiner"] + [h for h, _, _ in layout] + ["seeds"] + summary + extra + [SIG_HEADER]


def _n_numeric(table: pd.DataFrame, columns) -> int:
    """How many columns after the label are numbers (metrics, speed, seeds, Δm%, mean rank)."""
    return len(_layout(table, columns)) + 1 + len(_summary_layout(table))


def _rows(table: pd.DataFrame, columns, pm: str, bold) -> list[list[str]]:
    layout = _layout(table, columns)
    summary = _summary_layout(table)
    best = {}
    for _, col, higher in layout + summary:
        values = table[f"{col}_mean"] if f"{col}_mean" in table.columns else table[col]
        best[col] = _best(values, bool(higher)) if higher is not None else set()  # (None: no better end)
        if col == "speed":  # bold only a speed outside the baseline's own spread (mtbench/report/speed.py)
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
        for _, col, _ in summary:
            text = _fmt(row[col], math.nan)
            cells.append(bold(text) if i in best[col] else text)
        if shows_reference:
            cells.append(_reference_cell(row, lambda v: labels.get(("baseline", v), f"baseline ({v})")))
        cells.append(_sig_cell(row, columns[0][2]))
        rows.append(cells)
    return rows


def to_markdown(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = _headers(columns, table)
    numeric = _n_numeric(table, columns)
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
        .replace("Δ", r"$\Delta$")
    )


def to_latex(table: pd.DataFrame, columns=DEFAULT_COLUMNS) -> str:
    head = [_tex_text(h) for h in _headers(columns, table)]
    n_numeric = _n_numeric(table, columns)
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


def status_table(runs: pd.DataFrame) -> str:
    """Markdown: one line per run with its status (and reason), for a folder without a completed run."""
    lines = ["| combiner | variant | seed | status | reason |", "|---|---|---:|---|---|"]
    for _, r in runs.sort_values(["combiner", "variant", "seed"], key=lambda c: c.map(str)).iterrows():
        reason = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['combiner']} | {r['variant']} | {r['seed']} | {r['status']} | {reason} |")
    return "\n".join(lines) + "\n"


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


def speed_notes(runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The table's footnotes on speed: which clock the ratios come from and the baseline's own
    step time (its speed is 1.00 by definition; its spread is shown here), and, when the
    machine's load exceeded its cores during some runs, what the † marks."""
    done = runs[runs["status"] == "completed"] if len(runs) else runs
    clock = speed_clock(done)
    devices = set(done["device"]) if "device" in done else set()
    if clock == "cpu":
        how = "process CPU time per training step (the time the run's threads computed, which a busy machine stretches less than the wall time, stored in metrics.json; a sweep measures the column after its runs instead, speed.json)"
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


def reported_epoch(runs: pd.DataFrame) -> str:
    """Which epoch's test metrics the table shows (``trainer.report`` of the runs' metrics.json):
    ``the best-validation epoch`` or ``the mean of the last k epochs``; empty when no run says."""
    done = runs[runs["status"] == "completed"] if len(runs) and "status" in runs else runs
    if "report" not in done.columns:
        return ""
    kinds = {(r, int(k)) for r, k in zip(done["report"], done["report_k"]) if r}
    if not kinds:
        return ""
    names = {
        (r, k): f"the mean of the last {k} epochs' test metrics (trainer.report=last_k)"
        if r == "last_k"
        else "the best-validation epoch (trainer.report=best_val)"
        for r, k in kinds
    }
    if len(names) == 1:
        return next(iter(names.values()))
    return "mixed: " + "; ".join(sorted(names.values()))

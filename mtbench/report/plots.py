"""The comparison plots, PNG and PDF next to the tables in ``results/<name>/``:

- ``error_vs_speed.{png,pdf}``: each row's test error (the runs' first metric) against its
  training speed relative to the baseline (log scale); one small marker per seed, a large one at
  the mean over seeds; one colour per combiner, one marker shape per variant of it; a red ring
  around the runs during which the machine's load exceeded its cores (the table's †).
- ``val_curves.{png,pdf}``: the validation error per epoch, one panel per row of the table
  (combiner and variant): the mean over seeds and a band from the lowest to the highest seed,
  with the baseline's in grey for reference.
- ``conflict.{png,pdf}`` (runs trained with ``trainer.diagnostics=true``): per epoch, the mean
  pairwise cosine of the per-task gradients (the minimum dashed), the fraction of conflicting
  pairs and the task weights' normalised entropy (1: equal weights), one line per row of the
  table (the mean over its seeds), from the runs' ``history.csv`` ``diag_*`` columns.

Drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from mtbench.combiners import COMBINERS
from mtbench.files import atomic_write
from mtbench.report.load import completed_with_speed, load_runs, ordered, row_keys, speed_clock

#: (colour, marker) of the registered combiners (each class's ``style``); GradDrop red, the baseline dark grey
_STYLES = {name: cls.style for name, cls in COMBINERS.items() if cls.style is not None}
#: for other combiners, in alphabetical order
_EXTRA = (
    ("#e377c2", "<"),
    ("#7f7f7f", ">"),
    ("#393b79", "p"),
    ("#637939", "d"),
    ("#8c6d31", "H"),
    ("#843c39", "8"),
    ("#7b4173", "o"),
)


def style(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per combiner: fixed for the paper's combiners, so plots of different
    folders agree; the others take the remaining ones in alphabetical order."""
    extra = [n for n in ordered(names) if n not in _STYLES]
    return {n: _STYLES[n] if n in _STYLES else _EXTRA[extra.index(n) % len(_EXTRA)] for n in ordered(names)}


def _rows(done: pd.DataFrame) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The labels of the table's rows in order, and (colour, marker) per label: the combiner's
    colour; its marker for the first variant, other shapes for the next ones."""
    if "label" not in done.columns:
        done = done.assign(variant="default", label=done["combiner"], started_at="")
    keys = row_keys(done)
    labels = {(c, v): lab for c, v, lab in zip(done["combiner"], done["variant"], done["label"])}
    colours = style([c for c, _ in keys])
    shapes = [m for _, m in _STYLES.values()]
    out: dict[str, tuple[str, str]] = {}
    seen: dict[str, int] = {}
    for c, v in keys:
        colour, marker = colours[c]
        i = seen.get(c, 0)
        seen[c] = i + 1
        if i:
            others = [m for m in shapes if m != marker]
            marker = others[(i - 1) % len(others)]
        out[labels[(c, v)]] = (colour, marker)
    return [labels[k] for k in keys], out


def _save(fig, folder: Path, stem: str) -> list[Path]:
    written = []
    for ext in ("png", "pdf"):
        path = folder / f"{stem}.{ext}"
        atomic_write(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=150, bbox_inches="tight"), binary=True)
        written.append(path)
    return written


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _legend(ax, extra: list) -> None:
    """The combiners, then (after a gap) what the marks mean."""
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    if extra:
        handles += [Patch(visible=False)] + [h for h, _ in extra]
        labels += [""] + [label for _, label in extra]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)


def plot_error_vs_speed(done: pd.DataFrame, columns, folder: Path) -> list[Path]:
    """``done``: completed runs with ``speed`` (``table.completed_with_speed``)."""
    fig = error_vs_speed_figure(done, columns, folder.name)
    return _save(fig, folder, "error_vs_speed") if fig is not None else []


def error_vs_speed_figure(done: pd.DataFrame, columns, title: str):
    """The figure of ``error_vs_speed`` (None without a run to draw). With one seed per row the
    mean is the run itself: one marker per row, and the legend lists no per-seed marks."""
    from matplotlib.markers import MarkerStyle
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    key, header, higher = columns[0]
    col = f"test_{key}"
    done = done[done[col].notna() & (done["speed"] > 0)]
    if done.empty:
        return None
    if "label" not in done.columns:
        done = done.assign(label=done["combiner"])
    names, styles = _rows(done)
    seeds = done.groupby("label")["seed"].nunique()
    several = bool((seeds > 1).any())
    fig, ax = _figure(7.6, 4.6)
    ax.axvline(1.0, color="0.6", lw=0.8, ls=":", zorder=0)
    for name in names:
        sub = done[done["label"] == name]
        colour, marker = styles[name]
        big = 1.7 if marker == "*" else 1.0  # a star looks smaller than the other markers at the same size
        if several:
            ax.scatter(
                sub["speed"], sub[col], s=26 * big, color=colour, marker=marker, alpha=0.45, linewidths=0, zorder=2
            )
        label = f"{name} (n={seeds[name]})"
        ax.scatter(
            [sub["speed"].mean()],
            [sub[col].mean()],
            s=120 * big,
            color=colour,
            marker=marker,
            edgecolors="black" if MarkerStyle(marker).is_filled() else None,  # a line marker has no edge
            linewidths=0.9,
            label=label,
            zorder=3,
        )
    ax.set_xscale("log")
    lo, hi = done["speed"].min(), done["speed"].max()
    ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    clock = "CPU time" if speed_clock(done) == "cpu" else "wall time"
    ax.set_xlabel(f"training speed vs baseline, from {clock} per step (log scale; right = faster)")
    busy = done[done["overloaded"].fillna(False).astype(bool)] if "overloaded" in done.columns else done.iloc[0:0]
    if len(busy):  # runs during which the machine's load exceeded its cores: a red ring (the table's †)
        ax.scatter(busy["speed"], busy[col], s=260, facecolors="none", edgecolors="#d62728", linewidths=1.2, zorder=4)
    ax.set_ylabel(f"test {header} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(f"{title}: test {header} vs training speed", fontsize=11)
    ax.grid(True, which="major", color="0.9", lw=0.6)
    from matplotlib.lines import Line2D

    grey = "0.55"
    mean_mark = Line2D([], [], ls="", marker="o", ms=10, color=grey, markeredgecolor="black")
    seed_mark = Line2D([], [], ls="", marker="o", ms=5, color=grey, alpha=0.6, markeredgewidth=0)
    marks = [(mean_mark, "mean over seeds"), (seed_mark, "one seed")] if several else []
    if len(busy):
        cores = busy["cores"].dropna()
        ring = Line2D([], [], ls="", marker="o", ms=14, markerfacecolor="none", markeredgecolor="#d62728")
        marks.append((ring, f"load above the {int(cores.max()) if len(cores) else ''} cores (†)"))
    _legend(ax, marks)
    return fig


def load_histories(done: pd.DataFrame) -> pd.DataFrame:
    """Long frame of the completed runs' ``history.csv`` (with ``combiner`` and ``seed``)."""
    parts = []
    for _, run in done.iterrows():
        path = Path(run["run_dir"]) / "history.csv"
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {path}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        frame.insert(0, "seed", run["seed"])
        frame.insert(0, "label", run.get("label", run["combiner"]))
        frame.insert(0, "started_at", run.get("started_at", ""))
        frame.insert(0, "variant", run.get("variant", "default"))
        frame.insert(0, "combiner", run["combiner"])
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _epoch_stats(histories: pd.DataFrame, name: str, col: str) -> pd.DataFrame:
    """Per epoch: mean, lowest and highest over the combiner's seeds, and their number."""
    sub = histories[histories["label"] == name].groupby("epoch")[col]
    return pd.DataFrame({"mean": sub.mean(), "lo": sub.min(), "hi": sub.max(), "n": sub.count()}).dropna(
        subset=["mean"]
    )


def plot_val_curves(histories: pd.DataFrame, columns, folder: Path) -> list[Path]:
    """One panel per combiner (shared axes), the baseline drawn in grey in each for reference:
    nine overlapping bands in one panel would be unreadable."""
    fig = val_curves_figure(histories, columns, folder.name)
    return _save(fig, folder, "val_curves") if fig is not None else []


def val_curves_figure(histories: pd.DataFrame, columns, title: str):
    """The figure of ``val_curves`` (None without a history to draw). The legend lists only what
    is drawn: the band with several seeds, the baseline's curve when another panel shows it;
    the epochs are integer ticks (a 1-epoch run too)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    key, header, higher = columns[0]
    col = f"val_{key}"
    if histories.empty or col not in histories.columns or "epoch" not in histories.columns:
        return None
    names, styles = _rows(histories)
    stats = {name: _epoch_stats(histories, name, col) for name in names}
    base_rows = histories[histories["combiner"] == "baseline"]
    base_label = None
    if len(base_rows):
        default = base_rows[base_rows["variant"] == "default"]
        base_label = str((default if len(default) else base_rows)["label"].iloc[0])
    base = stats.get(base_label) if base_label else None
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.1 * ncols + 0.6, 2.3 * nrows + 1.1), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    banded = referenced = False
    for ax, name in zip(axes, names):
        st = stats[name]
        colour, marker = styles[name]
        if base is not None and name != base_label and len(base):
            referenced = True
            ax.fill_between(base.index, base["lo"], base["hi"], color="0.5", alpha=0.12, linewidth=0)
            ax.plot(base.index, base["mean"], color="0.45", lw=1.2, ls="--")
        n = int(st["n"].max()) if len(st) else 0
        if n > 1:
            banded = True
            ax.fill_between(st.index, st["lo"], st["hi"], color=colour, alpha=0.22, linewidth=0)
        ax.plot(st.index, st["mean"], color=colour, marker=marker, ms=4, lw=1.8)
        ax.set_title(f"{name} (n={n})", fontsize=10, color=colour if colour != "#333333" else "black")
        ax.grid(True, color="0.9", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelsize=8)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for i in range(max(0, len(names) - ncols), len(names)):  # the lowest panel of each column
        axes[i].set_xlabel("epoch", fontsize=9)
        axes[i].xaxis.set_tick_params(labelbottom=True)
    fig.supylabel(f"validation {header} ({'higher' if higher else 'lower'} is better)", fontsize=10)
    epochs = sorted(int(e) for e in histories["epoch"].dropna().unique())
    if len(epochs) < 3:  # so few epochs that the locator would add fractional ones around them
        axes[0].set_xticks(epochs)
        axes[0].set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    fig.suptitle(f"{title}: validation {header} per epoch", fontsize=11)
    marks = [(Line2D([], [], color="0.2", lw=1.8), "mean over seeds" if banded else "the run")]
    if banded:
        marks.append((Patch(color="0.2", alpha=0.22, lw=0), "lowest to highest seed"))
    if referenced:
        marks.append(
            (
                (Patch(color="0.5", alpha=0.12, lw=0), Line2D([], [], color="0.45", lw=1.2, ls="--")),
                "the baseline, for reference",
            )
        )
    fig.legend(
        [h for h, _ in marks],
        [t for _, t in marks],
        loc="outside lower center",
        ncols=len(marks),
        frameon=False,
        fontsize=9,
    )
    return fig


def make_plots(folder: Path | str, runs: pd.DataFrame | None = None, columns=None) -> list[Path]:
    """Draw both plots from the finished runs under ``folder`` (``runs`` and ``columns`` as
    ``table.load_runs`` returns them, read from ``folder`` when not given); return the files written."""
    folder = Path(folder)
    if runs is None or columns is None:
        runs, _, _, columns = load_runs(folder)
    if runs.empty:
        return []
    done = completed_with_speed(runs)
    if done.empty:
        return []
    written = plot_error_vs_speed(done, columns, folder)
    histories = load_histories(done)
    written += plot_val_curves(histories, columns, folder)
    written += plot_conflict(histories, folder)
    return written


#: the panels of ``conflict.png``: (history column, y label, a second column drawn dashed)
CONFLICT_PANELS = (
    ("diag_cos_mean", "pairwise cosine\n(mean; minimum dashed)", "diag_cos_min"),
    ("diag_conflict_frac", "conflicting pairs\n(fraction)", None),
    ("diag_w_entropy", "task-weight entropy\n(1 = equal weights)", None),
)


def plot_conflict(histories: pd.DataFrame, folder: Path) -> list[Path]:
    """``conflict.{png,pdf}`` when some run has the diagnostics' columns (else nothing)."""
    fig = conflict_figure(histories, folder.name)
    return _save(fig, folder, "conflict") if fig is not None else []


def conflict_figure(histories: pd.DataFrame, title: str):
    """The figure of ``conflict`` (None without a run trained with ``trainer.diagnostics``): one
    panel per statistic that some run has, one line per row (the mean over its seeds)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if histories.empty or "epoch" not in histories.columns:
        return None
    panels = [p for p in CONFLICT_PANELS if p[0] in histories.columns and histories[p[0]].notna().any()]
    if not panels:
        return None
    has = histories[histories[[p[0] for p in panels]].notna().any(axis=1)]
    names, styles = _rows(has)
    fig = Figure(figsize=(7.6, 2.0 * len(panels) + 0.9), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False).ravel()
    for ax, (col, ylabel, dashed) in zip(axes, panels):
        for name in names:
            colour, marker = styles[name]
            st = _epoch_stats(has, name, col)
            if st.empty:
                continue
            ax.plot(st.index, st["mean"], color=colour, marker=marker, ms=4, lw=1.6, label=name)
            if dashed is not None and dashed in has.columns:
                low = _epoch_stats(has, name, dashed)
                if not low.empty:
                    ax.plot(low.index, low["mean"], color=colour, lw=1.0, ls="--")
        if col != "diag_w_entropy":
            ax.axhline(0.0, color="0.6", lw=0.8, ls=":", zorder=0)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(True, color="0.9", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("epoch", fontsize=9)
    epochs = sorted(int(e) for e in has["epoch"].dropna().unique())
    if len(epochs) < 3:
        axes[0].set_xticks(epochs)
        axes[0].set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    fig.suptitle(f"{title}: per-task gradients and task weights per epoch", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=9)
    return fig

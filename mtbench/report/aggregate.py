"""The tables' numbers: one row per (combiner, variant) from the runs of a results folder
(:func:`aggregate`), per combiner tuned on validation (:func:`tuned`), and per attribute
(:func:`per_attribute_table`). Formatting is in ``formatting.py``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report.load import (
    DEFAULT_COLUMNS,
    _settings,
    common_settings,
    completed_with_speed,
    label,
    ordered,
    reference,
    row_keys,
    speed_clock,
)
from mtbench.report.significance import welch_t_test


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


def has_variants(runs: pd.DataFrame) -> bool:
    """Whether some combiner has more than one variant among the completed runs."""
    done = runs[runs["status"] == "completed"] if not runs.empty else runs
    return bool(len(done)) and bool((done.groupby("combiner")["variant"].nunique() > 1).any())

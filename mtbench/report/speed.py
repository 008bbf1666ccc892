"""The table's speed column, measured after a sweep: every swept combiner's training step timed on
the sweep's own task, model and batch, interleaved round by round in one process.

A run's own step times were taken minutes or hours apart, under whatever else the machine ran
then. Here every row (one per combiner and variant, each built from its recorded config on a
copy of the same initial model) takes one step per round, in an order rotating each round, so a
slow spell falls on every row alike; a row's speed is the median over rounds of the baseline's
step time over the row's in the same round (the method of ``scripts/bench_step.py``). The
baseline is timed twice per round: the ratios of the one to the other are its own spread, and a
speed inside that spread is never bolded (``boldable``).

:func:`measure` runs at the end of a sweep (``mtbench.report.callback``) and writes
``<results>/<name>/speed.json``; ``mtbench.report.table`` reads it (:func:`apply`).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mtbench.report.runs import METRICS, atomic_write_text

__all__ = ["SPEED_FILE", "measure", "apply", "boldable", "notes"]

#: the measurement's file in a results folder
SPEED_FILE = "speed.json"
#: the label of the baseline's second copy (its ratios to the first: the noise floor)
REPEAT = "baseline (repeat)"


def _completed(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(combiner, variant) -> the resolved config of its completed run with the lowest seed."""
    found: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for path in sorted((folder / "runs").glob(f"*/*/seed=*/{METRICS}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("status") != "completed" or not isinstance(record.get("config"), dict):
            continue
        key = (str(record.get("combiner")), str(record.get("variant", "default")))
        seed = int(record.get("seed", 0))
        if key not in found or seed < found[key][0]:
            found[key] = (seed, record["config"])
    return {k: v[1] for k, v in found.items()}


def _same_problem(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ta, tb = a.get("trainer", {}), b.get("trainer", {})
    return (
        a.get("task") == b.get("task")
        and a.get("model") == b.get("model")
        and ta.get("batch_size") == tb.get("batch_size")
        and ta.get("device") == tb.get("device")
    )


def measure(folder: Path | str, rounds: int = 24, warmup: int = 3, batches: int = 4) -> dict[str, Any] | None:
    """Time every completed (combiner, variant) of ``folder`` against the baseline, interleaved;
    write and return ``speed.json``'s content (None, and nothing written, without a completed
    baseline run)."""
    import torch
    from omegaconf import OmegaConf

    from mtbench.combiners import build_combiner
    from mtbench.data import build_task
    from mtbench.models import build_model
    from mtbench.train.batches import Preprocess
    from mtbench.train.batches import batches as batch_iter
    from mtbench.train.device import amp_dtype, resolve_device
    from mtbench.train.optim import build_optimizer
    from mtbench.train.step import TrainStep

    folder = Path(folder)
    configs = _completed(folder)
    base_key = ("baseline", "default") if ("baseline", "default") in configs else None
    if base_key is None:
        base_key = next((k for k in configs if k[0] == "baseline"), None)
    if base_key is None:
        return None
    base_cfg = OmegaConf.create(configs[base_key])
    rows = [k for k in configs if _same_problem(configs[k], configs[base_key])]
    left_out = sorted(f"{c} {v}" for c, v in configs if (c, v) not in rows)
    device = resolve_device(str(base_cfg.trainer.device))
    threads = base_cfg.trainer.get("num_threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(int(base_cfg.seed))
        task = build_task(base_cfg.task)
        task.setup(device)
        model = build_model(base_cfg.model, in_channels=task.in_channels, task=task).to(device)
        prep = Preprocess(task, device)
        bs = int(base_cfg.trainer.batch_size)
        data = []
        for images, labels in batch_iter(task.train, bs, torch.Generator().manual_seed(int(base_cfg.seed))):
            x, y = prep(images, labels)
            data.append((task.augment(x), y))
            if len(data) == batches:
                break
        steps: dict[str, Any] = {}
        labels = {}
        for key in [base_key, *[k for k in rows if k != base_key]] + [None]:
            cfg = OmegaConf.create(configs[key if key is not None else base_key])
            name = REPEAT if key is None else (key[0] if key[1] == "default" else f"{key[0]} {key[1]}")
            labels[name] = key
            own = copy.deepcopy(model)
            optimizer = build_optimizer(own.parameters(), cfg.trainer)
            combiner = build_combiner(
                cfg.combiner, task.num_tasks, default_leak=task.default_leak, task_names=task.task_names
            )
            gen = torch.Generator(device=device).manual_seed(0)
            cpu_gen = torch.Generator().manual_seed(0)
            steps[name] = TrainStep(
                own, combiner, optimizer, task.losses, device, amp_dtype(cfg.trainer), gen, cpu_gen, task.column_losses
            )
        names = list(steps)
        times: dict[str, list[float]] = {n: [] for n in names}
        started = time.perf_counter()
        # on a CPU the process's CPU time: other processes stretch a long step's wall time more
        # than a short one's (preempted more often), not the time its threads computed (with
        # OpenMP's passive wait policy, which the mtbench command sets, idle threads add none)
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        for rnd in range(warmup + rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                x, y = data[rnd % len(data)]
                if getattr(steps[name], "needs_input_grad", False):
                    x = x.detach().clone().requires_grad_(True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = clock()
                if getattr(steps[name], "needs_second_batch", False):  # (sdmgrad, modo) another of the batches
                    steps[name](x, y, data[(rnd + 1) % len(data)])
                else:
                    steps[name](x, y)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if rnd >= warmup:
                    times[name].append(clock() - t0)
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    base_name = names[0]
    base_t = times[base_name]
    out_rows = []
    for name in names:
        ratios = [b / t for b, t in zip(base_t, times[name], strict=True) if t > 0]
        key = labels[name]
        out_rows.append(
            {
                "combiner": key[0] if key else "baseline",
                "variant": key[1] if key else base_key[1],
                "label": name,
                "repeat": key is None,
                "step_s": statistics.median(times[name]),
                "speed": statistics.median(ratios),
                "speed_std": statistics.stdev(ratios) if len(ratios) > 1 else math.nan,
                "speed_min": min(ratios),
                "speed_max": max(ratios),
            }
        )
    noise = next(r for r in out_rows if r["repeat"])
    result = {
        "method": (
            "each row's training step (its recorded config, the sweep's task, model and batch) timed interleaved "
            "round by round in one process, the order rotating (process CPU time on a CPU, synchronised wall time "
            "on a GPU); speed = median over rounds of the baseline's step time / the row's in the same round"
        ),
        "rounds": rounds,
        "warmup": warmup,
        "device": str(device),
        "threads": torch.get_num_threads() if not threads else int(threads),
        "seconds": round(elapsed, 2),
        "baseline": {"combiner": base_key[0], "variant": base_key[1]},
        "baseline_spread": [noise["speed_min"], noise["speed_max"]],
        "left_out": left_out,
        "rows": [r for r in out_rows if not r["repeat"]],
    }
    atomic_write_text(folder / SPEED_FILE, json.dumps(result, indent=2) + "\n")
    return result


def load(folder: Path | str) -> dict[str, Any] | None:
    """``speed.json`` of ``folder``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / SPEED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("rows"), list) else None


def apply(table: pd.DataFrame, folder: Path | str) -> pd.DataFrame:
    """The summary ``table`` with its ``speed_mean`` / ``speed_std`` from ``speed.json`` (rows it
    measured; ``speed_measured`` says which) and the baseline's spread (``speed_noise_lo``,
    ``speed_noise_hi``); unchanged without a measurement."""
    data = load(folder)
    if data is None or table.empty:
        return table
    table = table.copy()
    measured = {(r["combiner"], r["variant"]): r for r in data["rows"]}
    lo, hi = data.get("baseline_spread", [math.nan, math.nan])
    table["speed_measured"] = False
    for i, row in table.iterrows():
        r = measured.get((row["combiner"], row["variant"]))
        if r is None:
            table.at[i, "speed_mean"], table.at[i, "speed_std"] = math.nan, math.nan
            continue
        table.at[i, "speed_mean"] = r["speed"]
        table.at[i, "speed_std"] = r["speed_std"] if not r["repeat"] and r["combiner"] != "baseline" else math.nan
        table.at[i, "speed_measured"] = True
    base = data.get("baseline", {})
    mask = (table["combiner"] == base.get("combiner")) & (table["variant"] == base.get("variant"))
    table.loc[mask, "speed_mean"] = 1.0
    table.loc[mask, "speed_std"] = math.nan
    table["speed_noise_lo"], table["speed_noise_hi"] = float(lo), float(hi)
    return table


def boldable(table: pd.DataFrame, best: set[int]) -> set[int]:
    """The positions of ``best`` (the fastest rows as shown) whose speed lies outside the spread of
    the baseline's own repeated measurements: with ``speed.json``, the baseline-vs-baseline ratios'
    range; else 1 +- the baseline seeds' relative spread of ``step_s`` (none with one seed)."""
    out = set()
    for i in best:
        row = table.iloc[i]
        speed = row.get("speed_mean", math.nan)
        if speed is None or pd.isna(speed):
            continue
        if "speed_noise_lo" in table.columns and pd.notna(row.get("speed_noise_lo")):
            lo, hi = float(row["speed_noise_lo"]), float(row["speed_noise_hi"])
        else:
            if not {"combiner", "variant", "step_s_std", "step_s_mean"} <= set(table.columns):
                continue
            base = table[(table["combiner"] == "baseline") & (table["variant"] == (row.get("reference") or "default"))]
            if base.empty or "step_s_std" not in base or pd.isna(base["step_s_std"].iloc[0]):
                continue
            rel = float(base["step_s_std"].iloc[0]) / float(base["step_s_mean"].iloc[0])
            lo, hi = 1.0 - rel, 1.0 + rel
        if speed > hi or speed < lo:
            out.add(i)
    return out


def notes(folder: Path | str) -> list[str]:
    """The table's footnote on a measured speed column (empty without ``speed.json``)."""
    data = load(folder)
    if data is None:
        return []
    lo, hi = data["baseline_spread"]
    text = (
        f"Speed: measured after the sweep, every row's training step timed interleaved with the baseline's in one "
        f"process ({data['rounds']} rounds, {data['device']}, {data['threads']} thread(s), {data['seconds']:.0f} s; "
        f"{'synchronised wall time' if str(data['device']).startswith('cuda') else 'process CPU time'}); "
        f"median over rounds of the baseline's step time / the row's. The baseline against itself: "
        f"{lo:.2f} to {hi:.2f}; a speed inside that range is not bold. Each run's own step times are in its metrics.json."
    )
    if data.get("left_out"):
        text += (
            f" Not measured (another task, model, batch or device than the baseline's): {', '.join(data['left_out'])}."
        )
    return [text]

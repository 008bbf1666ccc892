#!/usr/bin/env python
"""Are the tables' speed ratios stable on a busy machine? Two identical small `mtbench -m`
sweeps, one after the other, while background processes keep every core busy; the speed
ratios (baseline step time over each combiner's) of the two sweeps compared, from CPU time
(what the tables use on a CPU) and from wall time (what they used before).

    python scripts/bench_speed_stability.py                    # 5 combiners, shapes40, small config
    python scripts/bench_speed_stability.py --busy 4 --combiners baseline,clip,graddrop

Prints a table and writes JSON (per combiner and clock: the two ratios and their relative
difference; the worst difference per clock; the load seen) to
``docs/results/bench/speed_stability-cpu.json`` (``--out``). Target: the CPU-time ratios of the
two sweeps within 10 % of each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _busy import busy_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "bench" / "speed_stability-cpu.json"
SMALL = [
    "task.n_train=2048", "task.n_val=64", "task.n_test=64", "model.width=8", "model.rep_dim=32",
    "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu", "trainer.num_threads=1", "trainer.progress=false",
]  # fmt: skip


def mtbench() -> list[str]:
    script = Path(sys.executable).parent / "mtbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtbench"]


def sweep(results: Path, name: str, combiners: str, seeds: int, extra: list[str]) -> dict[str, dict[str, float]]:
    """Run one sweep (every combiner x seeds 0..seeds-1); per combiner, its speed ratio from CPU
    time and from wall time, as the table computes it: the baseline's mean step time over its
    seeds divided by the combiner's."""
    from mtbench.report.load import load_runs

    seed_list = ",".join(str(s) for s in range(seeds))
    # mtbench's sweeper runs every combiner of a seed in turn (hydra/sweeper=interleaved); pass
    # hydra/sweeper=basic as an override to see each combiner's seeds back to back instead
    cmd = [*mtbench(), "-m", f"combiner={combiners}", f"seed={seed_list}", f"name={name}", f"results_dir={results}"]
    cmd += [*SMALL, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"bench_speed_stability: the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    runs, _, _, _ = load_runs(results / name)
    done = runs[runs["status"] == "completed"]
    out = {}
    for clock, col in (("cpu", "train_step_cpu_s"), ("wall", "train_step_s")):
        mean = done.groupby("combiner")[col].mean()
        out[clock] = {c: float(mean["baseline"]) / float(mean[c]) for c in mean.index}
    out["load_max"] = float(done["load_max"].max())
    # each run's CPU time per step (ms), by combiner, in seed order
    ordered = done.sort_values("seed")
    out["runs_cpu_ms"] = {
        c: [round(1e3 * float(v), 3) for v in g["train_step_cpu_s"]] for c, g in ordered.groupby("combiner", sort=False)
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--combiners", default="baseline,clip,gradpenalty,gradnorm,graddrop", help="comma-separated, baseline first"
    )
    p.add_argument(
        "--busy", type=int, default=os.cpu_count() or 1, help="background busy processes (default: one per core)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per combiner in each sweep (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("overrides", nargs="*", help="more mtbench overrides for both sweeps")
    args = p.parse_args(argv)
    if not args.combiners.startswith("baseline"):
        p.error("--combiners must start with baseline (the reference of the ratios)")
    with busy_processes(args.busy, seconds=3600):
        started = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            first = sweep(Path(tmp), "sweep_1", args.combiners, args.seeds, args.overrides)
            second = sweep(Path(tmp), "sweep_2", args.combiners, args.seeds, args.overrides)
    rows = []
    for name in args.combiners.split(","):
        row = {"combiner": name}
        for clock in ("cpu", "wall"):
            a, b = first[clock][name], second[clock][name]
            row[clock] = {
                "sweep_1": round(a, 4),
                "sweep_2": round(b, 4),
                "rel_diff": round(abs(a - b) / max(min(a, b), 1e-12), 4),
            }
        rows.append(row)
    worst = {clock: max(r[clock]["rel_diff"] for r in rows) for clock in ("cpu", "wall")}
    result = {
        "what": "speed ratio vs baseline of two identical mtbench -m sweeps under background load, from CPU time and from wall time",
        "command_overrides": SMALL + args.overrides,
        "combiners": args.combiners.split(","),
        "seeds": args.seeds,
        "busy_processes": args.busy,
        "cores": os.cpu_count(),
        "load_max_1m": max(first["load_max"], second["load_max"]),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - started, 1),
        "rows": rows,
        "runs_cpu_ms": {"sweep_1": first["runs_cpu_ms"], "sweep_2": second["runs_cpu_ms"]},
        "worst_rel_diff": worst,
        "target": "cpu ratios within 10 % of each other",
        "within_target": worst["cpu"] <= 0.10,
    }
    print(f"{'combiner':<18} {'cpu 1':>7} {'cpu 2':>7} {'diff':>6}   {'wall 1':>7} {'wall 2':>7} {'diff':>6}")
    for r in rows:
        c, w = r["cpu"], r["wall"]
        print(
            f"{r['combiner']:<18} {c['sweep_1']:7.3f} {c['sweep_2']:7.3f} {c['rel_diff']:6.1%}   {w['sweep_1']:7.3f} {w['sweep_2']:7.3f} {w['rel_diff']:6.1%}"
        )
    print(
        f"worst difference: CPU time {worst['cpu']:.1%}, wall time {worst['wall']:.1%} (load up to {result['load_max_1m']:.1f} on {os.cpu_count()} cores)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

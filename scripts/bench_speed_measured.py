#!/usr/bin/env python
"""Is the speed column (measured after a sweep: ``mtbench.report.speed``) true under load? One
small ``mtbench -m`` sweep, then its speed column measured again and again, alternately with no
added load and while busy background processes keep every core busy; the columns compared.

    python scripts/bench_speed_measured.py                       # 4 combiners, shapes40, small config
    python scripts/bench_speed_measured.py --busy 2 --repeats 2 --combiners baseline,graddrop

The sweep's runs only provide the configs (and their own timings, kept in metrics.json): the
column comes from ``speed.measure``, which times every row interleaved in one process. Each
measurement here is what a sweep run at that moment would show. Prints a table and writes JSON
(``--out``, default ``docs/results/bench/speed_measured-cpu.json``). Target: every column within
10 % of the unloaded one.
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
DEFAULT_OUT = ROOT / "docs" / "results" / "bench" / "speed_measured-cpu.json"
SMALL = [
    "task.n_train=256", "task.n_val=64", "task.n_test=64", "model.width=8", "model.rep_dim=32",
    "trainer.epochs=1", "trainer.batch_size=32", "trainer.device=cpu", "trainer.num_threads=1", "trainer.progress=false",
]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--combiners", default="baseline,clip,graddrop,pcgrad")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes while loaded")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per condition")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    from mtbench.report import speed

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(sys.executable).parent / "mtbench"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mtbench"]
        sweep = [*cmd, "-m", f"combiner={args.combiners}", *SMALL, f"results_dir={tmp}", "hydra/job_logging=none"]
        proc = subprocess.run(sweep, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench_speed_measured: the sweep failed:\n{proc.stderr[-2000:]}")
        folder = Path(tmp) / "shapes40"
        measured = []
        for k in range(2 * args.repeats):
            loaded = k % 2 == 1
            with busy_processes(args.busy if loaded else 0):
                time.sleep(1.0 if loaded else 0.0)
                load0 = os.getloadavg()[0]
                result = speed.measure(folder, rounds=args.rounds)
                load1 = os.getloadavg()[0]
            assert result is not None
            measured.append(
                {
                    "loaded": loaded,
                    "busy": args.busy if loaded else 0,
                    "load": [round(load0, 2), round(load1, 2)],
                    "seconds": result["seconds"],
                    "baseline_spread": result["baseline_spread"],
                    "speed": {r["combiner"]: r["speed"] for r in result["rows"]},
                }
            )
            print(
                f"bench_speed_measured: measurement {k + 1} ({'loaded' if loaded else 'no added load'}) done",
                file=sys.stderr,
            )
    reference = measured[0]["speed"]
    worst = 0.0
    for m in measured:
        m["difference_vs_first"] = {n: abs(v / reference[n] - 1) for n, v in m["speed"].items()}
        worst = max(worst, *m["difference_vs_first"].values())
    report = {
        "command": "python scripts/bench_speed_measured.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "sweep": sweep[len(cmd) :],
        "measurements": measured,
        "worst_difference": worst,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    names = list(reference)
    print("| measurement | load (1 min) | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for i, m in enumerate(measured, 1):
        label = f"{i}: {'busy x' + str(m['busy']) if m['loaded'] else 'no added load'}"
        cells = [f"{m['speed'][n]:.2f}" for n in names]
        print(f"| {label} | {m['load'][0]:.1f}-{m['load'][1]:.1f} | " + " | ".join(cells) + " |")
    print(f"\nworst difference from measurement 1: {100 * worst:.1f} %")
    return report


if __name__ == "__main__":
    main()

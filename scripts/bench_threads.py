#!/usr/bin/env python
"""Which CPU thread setting keeps a training step fast on a busy machine? The quickstart's
problem (``task=shapes40``, its default model and batch) stepped by the baseline and by PCGrad at
the parameter level (T backward passes: the step most sensitive to threads), in a fresh process
per setting, the settings alternating, with and without busy processes keeping every core busy.

    python scripts/bench_threads.py                       # 4 settings x (no added load, busy x cores)
    python scripts/bench_threads.py --steps 20 --repeats 3

Settings: torch's default intra-op threads (one per core) or ``trainer.num_threads=1``, each with
the OpenMP runtime's default wait policy or ``OMP_WAIT_POLICY=PASSIVE`` (idle worker threads
sleep instead of spinning). Prints a table of median step wall times (ms) and writes JSON
(``--out``, default ``docs/results/bench/threads-cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _busy import busy_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "bench" / "threads-cpu.json"
SETTINGS = {
    "default threads": (None, None),
    "default threads, passive": (None, "PASSIVE"),
    "1 thread": (1, None),
    "1 thread, passive": (1, "PASSIVE"),
}
ROWS = (("baseline", "representation"), ("pcgrad", "params"))


def worker(threads: int | None, steps: int, warmup: int) -> dict[str, list[float]]:
    """Time ``steps`` training steps of each row of ROWS on the quickstart's problem (this process)."""
    import torch
    from hydra import compose, initialize_config_module

    from mtbench.combiners import build_combiner
    from mtbench.data import build_task
    from mtbench.models import build_model
    from mtbench.train.batches import Preprocess, batches
    from mtbench.train.optim import build_optimizer
    from mtbench.train.rng import set_num_threads
    from mtbench.train.step import TrainStep

    set_num_threads(threads)
    with initialize_config_module("mtbench.configs", version_base=None):
        cfg = compose("config", overrides=["trainer.device=cpu"])
        combiners = {
            f"{name}@{level}": compose(
                "config", overrides=[f"combiner={name}"] + ([f"combiner.level={level}"] if name != "baseline" else [])
            ).combiner
            for name, level in ROWS
        }
    torch.manual_seed(0)
    task = build_task(cfg.task)
    device = torch.device("cpu")
    task.setup(device)
    model = build_model(cfg.model, in_channels=task.in_channels, task=task)
    prep = Preprocess(task, device)
    data = []
    for images, labels in batches(task.train, int(cfg.trainer.batch_size), torch.Generator().manual_seed(0)):
        data.append(prep(images, labels))
        if len(data) == 4:
            break
    out = {}
    for row, ccfg in combiners.items():
        combiner = build_combiner(ccfg, task.num_tasks, default_leak=task.default_leak)
        own = build_model(cfg.model, in_channels=task.in_channels, task=task)
        own.load_state_dict(model.state_dict())
        combiner.prepare(own)
        step = TrainStep(own, combiner, build_optimizer(own.parameters(), cfg.trainer), task.losses, device)
        times = []
        for k in range(warmup + steps):
            x, y = data[k % len(data)]
            t0 = time.perf_counter()
            step(x, y)
            if k >= warmup:
                times.append(time.perf_counter() - t0)
        out[row] = times
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per row and process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="processes per setting and condition")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes while loaded")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        threads = None if args.worker == "default" else int(args.worker)
        print(json.dumps(worker(threads, args.steps, args.warmup)))
        return {}

    samples: dict[tuple[str, bool], dict[str, list[float]]] = {}
    loads: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for loaded in (False, True):
            with busy_processes(args.busy if loaded else 0):
                for label, (threads, policy) in SETTINGS.items():
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    if policy:
                        env["OMP_WAIT_POLICY"] = policy
                    cmd = [sys.executable, __file__, "--worker", str(threads or "default")]
                    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        sys.exit(f"bench_threads: the worker failed:\n{proc.stderr[-2000:]}")
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                    for row, times in result.items():
                        samples.setdefault((label, loaded), {}).setdefault(row, []).extend(times)
                    loads.setdefault((label, loaded), []).append(os.getloadavg()[0])
    rows = [f"{n}@{lv}" for n, lv in ROWS]
    table = []
    for (label, loaded), by_row in samples.items():
        table.append(
            {
                "setting": label,
                "loaded": loaded,
                "busy": args.busy if loaded else 0,
                "load_1min": [round(v, 2) for v in loads[(label, loaded)]],
                "step_ms": {r: 1000 * statistics.median(by_row[r]) for r in rows},
            }
        )
    report = {
        "command": "python scripts/bench_threads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "rows": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| setting | added load | load (1 min) | " + " | ".join(f"{r} (ms)" for r in rows) + " |")
    print("|---|---|---|" + "---:|" * len(rows))
    for r in table:
        load = f"{min(r['load_1min']):.1f}-{max(r['load_1min']):.1f}"
        cells = [f"{r['step_ms'][k]:.0f}" for k in rows]
        print(
            f"| {r['setting']} | {'busy x' + str(r['busy']) if r['loaded'] else 'none'} | {load} | "
            + " | ".join(cells)
            + " |"
        )
    return report


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time the work ``trainer.diagnostics=true`` adds to a training step, apart from the step.

    python scripts/bench_diagnostics.py                       # the CelebA-shaped problem of bench_step.py
    python scripts/bench_diagnostics.py --combiners pcgrad@representation,baseline --steps 20

On a busy machine the difference of two full step times (``bench_step.py``'s ``+diag`` rows) is
lost in the noise; this script times what the diagnostics run, inside the trainer's own step
(:class:`mtbench.train.step.TrainStep` with its ``diagnostics``): the calls before and after the
combiner's backward pass (the extra Gram matrix at the representation for a combiner without one,
the statistics, the accumulation), and reports their median per step against the median of the
same steps' total time (forward, combiner, optimizer step). Work the combiners do inside their
own backward pass when the diagnostics are on (keeping a reference to the Gram matrix; GradDrop's
Gram matrix of its factored gradients and its mask counts) is not in it: the ``+diag`` rows of
``bench_step.py`` measure whole steps. Prints a markdown table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import PROBLEM_OVERRIDES, build_problem, combiner_config, compose, machine_info, split_row  # noqa: E402


class Timed:
    """The diagnostics' calls, timed (synchronised on a GPU); ``spent[0]``: their seconds so far."""

    def __init__(self, diag, sync):
        self.diag, self.sync, self.spent = diag, sync, [0.0]

    def _timed(self, fn, s) -> None:
        self.sync()
        t0 = time.perf_counter()
        fn(s)
        self.sync()
        self.spent[0] += time.perf_counter() - t0

    def before(self, s) -> None:
        self._timed(self.diag.before, s)

    def after(self, s) -> None:
        self._timed(self.diag.after, s)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (trainer.num_threads=..., trainer.device=...)")
    parser.add_argument(
        "--combiners", default="pcgrad@representation,mgda@representation,upgrad@representation,uw,baseline"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per combiner (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--out", default=None, help="JSON output")
    args = parser.parse_args(argv)

    from mtbench.combiners import build_combiner
    from mtbench.train.device import resolve_device
    from mtbench.train.diagnostics import Diagnostics
    from mtbench.train.optim import build_optimizer
    from mtbench.train.step import TrainStep

    base = list(PROBLEM_OVERRIDES) + list(args.overrides)
    cfg = compose(base)
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    device = resolve_device(cfg.trainer.device)
    shape = SimpleNamespace(num_tasks=40, channels=3, image_size=64, heads="linear", head_hidden=64, num_batches=4)
    problem = build_problem(cfg, shape, device, user_task=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for spec in [s.strip() for s in args.combiners.split(",") if s.strip()]:
        cfg_row = combiner_config(spec, [], base)
        model = copy.deepcopy(problem.model)
        optimizer = build_optimizer(model.parameters(), cfg_row.trainer)
        combiner = build_combiner(cfg_row.combiner, problem.num_tasks)
        gen = torch.Generator(device=device).manual_seed(1)
        step = TrainStep(model, combiner, optimizer, problem.losses, device, None, gen, gen, problem.column_losses)
        diag = Diagnostics(combiner, [str(i) for i in range(problem.num_tasks)])
        timed = Timed(diag, sync)
        spent = timed.spent
        step.diagnostics = timed
        totals, extra = [], []
        for i in range(args.warmup + args.steps):
            x, y = problem.batches[i % len(problem.batches)]
            spent[0] = 0.0
            sync()
            t0 = time.perf_counter()
            step(x, y)
            sync()
            if i >= args.warmup:
                totals.append(time.perf_counter() - t0)
                extra.append(spent[0])
        diag.epoch_values()
        name, level = split_row(spec)
        row = {
            "row": spec,
            "combiner": name,
            "level": level,
            "gram_from_combiner": bool(combiner.computes_gram()),
            "step_ms": statistics.median(totals) * 1000,
            "diagnostics_ms": statistics.median(extra) * 1000,
            "share": statistics.median(e / t for e, t in zip(extra, totals)),
        }
        rows.append(row)
        print(f"bench_diagnostics: {spec} done", file=sys.stderr)
    report = {
        "problem": problem.description,
        "machine": machine_info(device),
        "command": " ".join(["python", "scripts/bench_diagnostics.py"] + (sys.argv[1:] if argv is None else argv)),
        "steps": args.steps,
        "rows": rows,
    }
    print("| row | Gram matrix | step (ms) | diagnostics (ms) | share of the step |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        src = "the combiner's" if r["gram_from_combiner"] else "one more, at the representation"
        print(f"| {r['row']} | {src} | {r['step_ms']:.0f} | {r['diagnostics_ms']:.2f} | {100 * r['share']:.2f}% |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""What a Gram-weighted combiner adds to a training step at the representation, measured apart:
its ``gram_weights`` (the weights from the step's float64 Gram matrix, its state carried from
step to step) on the Gram matrices of real steps, against the baseline's full step (forward,
backward, optimizer) timed in the same process.

    python scripts/bench_weights.py                                  # pcd, cr_mogm, upgrad; CelebA-shaped
    python scripts/bench_weights.py --combiners pcd,pcd:solver=torchjd --steps 8
    python scripts/bench_weights.py --combiners cr_mogm:inner=mgda

The problem is ``scripts/bench_step.py``'s (the CelebA-shaped one by default: ResNet-18 on
64x64 inputs, batch 64, 40 binary attributes, linear heads); ``--steps`` baseline steps are
timed (after one warm-up step) and their per-task gradients at the representation give the
Gram matrices. Each combiner (``name`` or ``name:option=value,...`` with ``:`` between options)
computes its weights on those matrices in order, ``--repeats`` times from a fresh instance
(the first pass, which compiles what is compiled, is not timed). Prints a markdown table: the
median milliseconds of the weights per step and that time as a percentage of the baseline's
median step (the cost a step at the representation adds: the per-task gradients at the
representation and the combination are the same for every Gram-weighted method).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse(spec: str) -> tuple[str, dict]:
    import yaml

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(":")):
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    return name, options


def main() -> None:
    import bench_step

    from mtbench.combiners import COMBINERS, Step
    from mtbench.combiners.taskgrads import rep_task_grads
    from mtbench.train.optim import build_optimizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combiners", default="pcd,cr_mogm,upgrad")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = bench_step.compose(list(bench_step.PROBLEM_OVERRIDES) + ["trainer.batch_size=64"])
    shape = types.SimpleNamespace(
        num_tasks=40, channels=3, image_size=64, heads="linear", head_hidden=0, num_batches=args.steps + 1
    )
    problem = bench_step.build_problem(cfg, shape, torch.device("cpu"), False)
    model = problem.model
    optimizer = build_optimizer(model.parameters(), cfg.trainer)
    grams, times = [], []
    for k, (x, y) in enumerate(problem.batches):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        rep, out = model(x)
        losses = problem.losses(out, y)
        losses.sum().backward()
        optimizer.step()
        if k > 0:
            times.append(time.perf_counter() - start)
        rep, out = model(x)  # (untimed) the per-task gradients at the representation
        step = Step(model, x, rep, out, problem.losses(out, y), column_losses=problem.column_losses)
        grams.append(rep_task_grads(step).gram().detach().clone())
    grams = grams[1:]
    base = statistics.median(times) * 1e3
    print(f"baseline step: {base:.0f} ms (median of {len(times)}), {problem.description}")
    print("\n| combiner | weights, ms / step | added to the baseline's step |\n|---|---:|---:|")
    fake = types.SimpleNamespace(losses=torch.ones(problem.num_tasks), rep=torch.zeros(1), cpu_generator=None)
    for spec in args.combiners.split(","):
        name, options = parse(spec)
        per_step = []
        for r in range(args.repeats + 1):
            comb = COMBINERS[name](problem.num_tasks, **options)
            fake.cpu_generator = torch.Generator().manual_seed(r)
            for gram in grams:
                start = time.perf_counter()
                comb.gram_weights(gram, fake)
                if r > 0:
                    per_step.append(time.perf_counter() - start)
        ms = statistics.median(per_step) * 1e3
        print(f"| {spec} | {ms:.2f} | {100 * ms / base:.1f} % |")


if __name__ == "__main__":
    main()

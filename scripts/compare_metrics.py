#!/usr/bin/env python
"""Compare every run's metrics.json field between two results folders, timings left out.

    python scripts/compare_metrics.py results_before/shapes40 results_after/shapes40
    python scripts/compare_metrics.py A/shapes40 B/shapes40 --ignore config.results_dir

Pairs the runs by their path under each folder (``runs/<combiner>/<variant>/seed=<seed>``) and
compares every field of their ``metrics.json`` exactly (floats bit for bit), except those that
measure time or the machine's load (:data:`TIMING`, at any depth). Prints each difference and
a summary. ``--ignore`` leaves out more fields by their dotted path (``config.results_dir``
when the two were written under different ``results_dir``). Exits 1 if any field differs or a run is in one folder only, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: fields that measure time, the clock or the machine's load: they differ between two runs of the
#: same command
TIMING = frozenset(
    {
        "started_at",
        "finished_at",
        "wall_s",
        "train_step_s",
        "train_step_cpu_s",
        "examples_per_s",
        "load",
    }
)


def differences(a: Any, b: Any, where: str = "", ignore: frozenset[str] = frozenset()) -> list[str]:
    """Every path at which ``a`` and ``b`` differ (timing fields and the ``ignore`` paths skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key in TIMING or f"{where}.{key}".lstrip(".") in ignore:
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
                continue
            out += differences(a[key], b[key], f"{where}.{key}", ignore)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} entries before, {len(b)} after"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", ignore)]
    if a != b or type(a) is not type(b):
        return [f"{where}: {a!r} before, {b!r} after"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", action="append", default=[], help="a field's dotted path to leave out (repeatable)")
    args = parser.parse_args(argv)
    runs = {}
    for side, root in (("before", args.before), ("after", args.after)):
        for path in sorted(root.rglob("metrics.json")):
            runs.setdefault(path.relative_to(root), {})[side] = path
    if not runs:
        print(f"compare_metrics: no metrics.json under {args.before} or {args.after}", file=sys.stderr)
        return 2
    problems = 0
    for rel, pair in sorted(runs.items()):
        if len(pair) < 2:
            print(f"{rel}: only {next(iter(pair))}")
            problems += 1
            continue
        before = json.loads(pair["before"].read_text())
        after = json.loads(pair["after"].read_text())
        found = differences(before, after, ignore=frozenset(args.ignore))
        for line in found:
            print(f"{rel}: {line}")
        problems += bool(found)
    print(f"compare_metrics: {len(runs)} run(s), {problems} with differences", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

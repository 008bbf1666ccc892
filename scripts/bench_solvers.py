#!/usr/bin/env python
"""Time each gradient-level combiner's solver alone: its weights from a T x T float64 Gram
matrix, the cost a combiner adds to a step at the representation beyond the Gram matrix itself.

    python scripts/bench_solvers.py                       # T = 40 and T = 400, every solver
    python scripts/bench_solvers.py --tasks 40 --solvers mgda,fairgrad,fairgrad-scipy

The Gram matrix is that of T random gradients in D = 512 dimensions sharing a common component
(``g_i = 0.3 c + n_i``, c and n_i standard normal): many pairs conflict, as in training. Each
solver runs in a loop for at least ``--seconds`` after one untimed call; a row's time is the
mean per call. Stateful solvers run as their combiner does: MGDA and FairGrad warm-started from
the previous call on a slightly different matrix (``*-cold``: a cold start every call), as do
UPGrad and DualProj (their free sets), Nash-MTL from its last alpha, GradVac with its EMA of
similarities, CAGrad from its last weights. ``fairgrad-scipy`` is torchjd's least-squares
solve (``solver: scipy``), ``cagrad-cvxpy`` torchjd's CLARABEL solve (``solver: cvxpy``),
``upgrad-quadprog`` and ``dualproj-quadprog`` torchjd's quadprog QPs (``solver: quadprog``),
``imtl_g-torchjd`` and ``aligned_mtl-torchjd`` torchjd's ``IMTLGWeighting`` (a pseudo-inverse)
and ``AlignedMTLWeighting`` (its T x T balance matrix),
``gradvac-torchjd`` torchjd's ``GradVacWeighting`` (a loop over the task pairs),
``nash_mtl-torchjd`` torchjd's ``NashMTL`` (the authors' cvxpy iterations; on a square root of
the Gram matrix, and only up to ``MAX_TASKS`` tasks: beyond, one call takes minutes). Writes JSON (``--out``, default
``docs/results/bench/solvers-cpu.json``) and prints a markdown table; one thread unless
``--threads``.

    python scripts/bench_solvers.py --forms               # compiled against batched, T = 4 .. 256

``--forms`` times the algorithms that exist in two forms, compiled (numba, the form below
``COMPILED_BELOW`` = 64 tasks) and batched (NumPy and torch, the form from 64 on), each forced
on both sides of the switch, and checks that both give the same weights; JSON to
``docs/results/bench/solver-forms-cpu.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mtbench.combiners import functional as F

ROOT = Path(__file__).resolve().parents[1]
#: rows timed only up to this many tasks (their cell is "—" beyond)
MAX_TASKS = {"nash_mtl-torchjd": 40}


def gram_pair(n_tasks: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gram matrices of nearby gradient sets (this step's and the last step's)."""
    gen = torch.Generator().manual_seed(seed)
    grads = 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64) + torch.randn(
        n_tasks, dim, generator=gen, dtype=torch.float64
    )
    moved = grads + 0.05 * torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    return grads @ grads.T, moved @ moved.T


def solvers(gram: torch.Tensor, last: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Row name -> a call computing the weights from ``gram`` (state from ``last``)."""
    mgda_start = F.mgda_weights_from_gram(last)
    _, fair_start = F.fairgrad_state(last)
    _, nash_alpha = F.nash_mtl_weights_from_gram(last)
    _, phi = F.gradvac_weights_from_gram(last)
    _, up_free = F.dual_cone_state(last, "upgrad")
    _, dp_free = F.dual_cone_state(last, "dualproj")
    _, ca_start = F.cagrad_state(last)
    gen = torch.Generator().manual_seed(0)

    @functools.cache
    def jd_gradvac():  # torchjd's GradVacWeighting, built at its row's first (untimed) call
        from mtbench.combiners.jd import weighting

        weights = weighting("GradVacWeighting", "gradvac", beta=0.5)
        weights(last)  # (its EMA of similarities, as ours)
        return weights

    @functools.cache
    def jd_weighting(cls_name: str, method: str):  # a stateless torchjd weighting of the Gram matrix
        from mtbench.combiners.jd import weighting

        return weighting(cls_name, method)

    @functools.cache
    def jd_nash():  # torchjd's NashMTL aggregator (cvxpy), on a square root of the Gram matrix
        from mtbench.combiners.jd import require

        require("NashMTL", "nash_mtl")
        import torchjd.aggregation as aggregation

        aggregator = aggregation.NashMTL(n_tasks=gram.shape[0], max_norm=0.0)
        aggregator(F.gram_square_root(last))  # (its warm start: the last step's alpha, as ours)
        return aggregator

    root = F.gram_square_root(gram)  # M M^T = gram: the matrix torchjd's aggregator takes

    return {
        "mgda": lambda: F.mgda_weights_from_gram(gram, start=mgda_start),
        "mgda-cold": lambda: F.mgda_weights_from_gram(gram),
        "pcgrad": lambda: F.pcgrad_weights_from_gram(gram, generator=gen),
        "upgrad": lambda: F.dual_cone_state(gram, "upgrad", start=up_free),
        "upgrad-cold": lambda: F.dual_cone_state(gram, "upgrad"),
        "upgrad-quadprog": lambda: F.dual_cone_state(gram, "upgrad", "quadprog"),
        "dualproj": lambda: F.dual_cone_state(gram, "dualproj", start=dp_free),
        "dualproj-quadprog": lambda: F.dual_cone_state(gram, "dualproj", "quadprog"),
        "cagrad": lambda: F.cagrad_state(gram, start=ca_start),
        "cagrad-cold": lambda: F.cagrad_state(gram),
        "cagrad-cvxpy": lambda: F.cagrad_state(gram, solver="cvxpy"),
        "nash_mtl": lambda: F.nash_mtl_weights_from_gram(gram, nash_alpha),
        "nash_mtl-torchjd": lambda: jd_nash()(root),
        "imtl_g": lambda: F.imtl_g_weights_from_gram(gram),
        "imtl_g-torchjd": lambda: jd_weighting("IMTLGWeighting", "imtl_g")(gram),
        "aligned_mtl": lambda: F.aligned_mtl_weights_from_gram(gram),
        "aligned_mtl-torchjd": lambda: jd_weighting("AlignedMTLWeighting", "aligned_mtl")(gram),
        "fairgrad": lambda: F.fairgrad_state(gram, start=fair_start),
        "fairgrad-cold": lambda: F.fairgrad_state(gram),
        "fairgrad-scipy": lambda: F.fairgrad_state(gram, solver="scipy"),
        "config": lambda: F.config_weights_from_gram(gram),
        "gradvac": lambda: F.gradvac_weights_from_gram(gram, phi, generator=gen),
        "gradvac-torchjd": lambda: jd_gradvac()(gram),
    }


#: the algorithms in two forms: row -> (the module whose switches pick the form, their names; the
#: call on (gram, last) warm-started as the combiner runs it)
FORMS = {
    "dual_cone/upgrad": ("dual_cone", "_COMPILED_BELOW"),
    "dual_cone/dualproj": ("dual_cone", "_COMPILED_BELOW"),
    # UPGrad on independent gradients in 1024 dimensions (no shared component): about half of
    # each QP's constraints active, the large free sets a training step at many tasks can have
    "dual_cone/upgrad-wide": ("dual_cone", "_COMPILED_BELOW"),
    "newton/nash_mtl": ("newton", "_COMPILED_BELOW"),
    "newton/fairgrad": ("newton", "_COMPILED_BELOW"),
    "certified/imtl_g": ("certified", "COMPILED_BELOW"),
    "certified/config": ("certified", "COMPILED_BELOW"),
}


def wide_pair(n_tasks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gram_pair` for independent gradients in 1024 dimensions (row ``*-wide``)."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n_tasks, 1024, generator=gen, dtype=torch.float64)
    moved = grads + 0.05 * torch.randn(n_tasks, 1024, generator=gen, dtype=torch.float64)
    return grads @ grads.T, moved @ moved.T


def form_calls(gram: torch.Tensor, last: torch.Tensor, wide: torch.Tensor, wide_last: torch.Tensor):
    """Row of :data:`FORMS` -> a call returning the weights (state from ``last``; the ``*-wide``
    row on ``wide``, state from ``wide_last``)."""
    _, up_free = F.dual_cone_state(last, "upgrad")
    _, dp_free = F.dual_cone_state(last, "dualproj")
    _, wide_free = F.dual_cone_state(wide_last, "upgrad")
    _, nash_alpha = F.nash_mtl_weights_from_gram(last)
    _, fair_start = F.fairgrad_state(last)
    return {
        "dual_cone/upgrad": lambda: F.dual_cone_state(gram, "upgrad", start=up_free)[0],
        "dual_cone/dualproj": lambda: F.dual_cone_state(gram, "dualproj", start=dp_free)[0],
        "dual_cone/upgrad-wide": lambda: F.dual_cone_state(wide, "upgrad", start=wide_free)[0],
        "newton/nash_mtl": lambda: F.nash_mtl_weights_from_gram(gram, nash_alpha)[0],
        "newton/fairgrad": lambda: F.fairgrad_state(gram, start=fair_start)[0],
        "certified/imtl_g": lambda: F.imtl_g_weights_from_gram(gram),
        "certified/config": lambda: F.config_weights_from_gram(gram),
    }


def forced(row: str, compiled: bool) -> Callable[[Callable[[], torch.Tensor]], torch.Tensor]:
    """Run a call with the row's switch set so that every T takes the ``compiled`` form (or the
    batched one)."""
    import importlib

    module_name, *attrs = FORMS[row]
    module = importlib.import_module(f"mtbench.combiners.solvers.{module_name}")

    def run(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        saved = [getattr(module, attr) for attr in attrs]
        for attr in attrs:
            setattr(module, attr, 1 << 30 if compiled else 0)
        try:
            return fn()
        finally:
            for attr, value in zip(attrs, saved):
                setattr(module, attr, value)

    return run


def bench_forms(tasks: list[int], dim: int, seconds: float, chosen: list[str]) -> list[dict]:
    rows = []
    for n_tasks in tasks:
        calls = form_calls(*gram_pair(n_tasks, dim, n_tasks), *wide_pair(n_tasks, n_tasks))
        for name in chosen:
            out = {}
            for form in ("compiled", "batched"):
                run = forced(name, form == "compiled")
                fn = calls[name]
                weights = run(fn)
                ms, n = time_call(lambda fn=fn, run=run: run(fn), seconds)
                out[form] = (ms, weights.to(torch.float64))
                print(f"bench_solvers: T={n_tasks} {name} {form}: {ms:.3f} ms", file=sys.stderr)
            (c_ms, c_w), (b_ms, b_w) = out["compiled"], out["batched"]
            diff = float((c_w - b_w).abs().max() / b_w.abs().max().clamp_min(1e-300))
            rows.append(
                {"algorithm": name, "tasks": n_tasks, "compiled_ms": c_ms, "batched_ms": b_ms, "max_rel_diff": diff}
            )
    return rows


def time_call(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Mean ms per call over at least ``seconds`` (and 3 calls), after one untimed call."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return 1e3 * (time.perf_counter() - start) / calls, calls


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="40,400", help="comma-separated T (default 40,400)")
    parser.add_argument("--dim", type=int, default=512, help="gradient dimension D (default 512)")
    parser.add_argument("--solvers", default=None, help="comma-separated rows (default: all)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per row (default 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="JSON output (default docs/results/bench/solvers-cpu.json)")
    parser.add_argument("--forms", action="store_true", help="compiled against batched forms (T = 4 .. 256)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.forms:
        return main_forms(args, argv)
    tasks = [int(t) for t in args.tasks.split(",")]
    names = list(solvers(*gram_pair(3, 4, 0)))
    chosen = names if args.solvers is None else args.solvers.split(",")
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"bench_solvers: unknown row {unknown[0]!r}; choose from: {', '.join(names)}", file=sys.stderr)
        raise SystemExit(2)
    rows = []
    for n_tasks in tasks:
        calls = solvers(*gram_pair(n_tasks, args.dim, n_tasks))
        for name in chosen:
            if n_tasks > MAX_TASKS.get(name, n_tasks):
                continue
            ms, n = time_call(calls[name], args.seconds)
            rows.append({"solver": name, "tasks": n_tasks, "ms_per_call": ms, "calls": n})
            print(f"bench_solvers: T={n_tasks} {name}: {ms:.3f} ms", file=sys.stderr)
    report = {
        "command": "python scripts/bench_solvers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "dim": args.dim,
        "rows": rows,
    }
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / "bench" / "solvers-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    header = "| solver | " + " | ".join(f"T = {t} (ms)" for t in tasks) + " |"
    print(header)
    print("|---|" + "---:|" * len(tasks))
    for name in chosen:
        found = {r["tasks"]: r["ms_per_call"] for r in rows if r["solver"] == name}
        cells = [f"{found[t]:.3g}" if t in found else "—" for t in tasks]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"bench_solvers: wrote {out}", file=sys.stderr)
    return report


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main_forms(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """``--forms``: both forms of each two-form algorithm at every T, and their ratio."""
    tasks = [int(t) for t in (args.tasks if args.tasks != "40,400" else "4,10,40,63,64,128,256").split(",")]
    chosen = list(FORMS) if args.solvers is None else args.solvers.split(",")
    unknown = [n for n in chosen if n not in FORMS]
    if unknown:
        print(f"bench_solvers: unknown row {unknown[0]!r}; choose from: {', '.join(FORMS)}", file=sys.stderr)
        raise SystemExit(2)
    rows = bench_forms(tasks, args.dim, args.seconds, chosen)
    report = {
        "command": "python scripts/bench_solvers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine(),
        "dim": args.dim,
        "rows": rows,
    }
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / "bench" / "solver-forms-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| algorithm | " + " | ".join(f"T = {t}" for t in tasks) + " |")
    print("|---|" + "---:|" * len(tasks))
    for name in chosen:
        cells = []
        for t in tasks:
            r = next(r for r in rows if r["algorithm"] == name and r["tasks"] == t)
            cells.append(f"{r['compiled_ms']:.3g} / {r['batched_ms']:.3g}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"bench_solvers: wrote {out} (cells: compiled / batched ms per call)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()

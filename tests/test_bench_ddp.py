"""``scripts/bench_step.py --ddp 2``: two gloo processes on the CPU time the combiners against
DDP's baseline and count what each sends per step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"
T, REP = 3, 8


@pytest.mark.slow
def test_bench_step_ddp_rows_and_their_traffic(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        sys.executable,
        str(SCRIPT),
        "model=small_cnn",
        "model.width=4",
        f"model.rep_dim={REP}",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "--ddp",
        "2",
        "--num-tasks",
        str(T),
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--combiners",
        "baseline,mgda@representation,mgda@params,graddrop,uw",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["ddp", "baseline", "mgda@representation", "mgda@params", "graddrop", "uw"]
    total = report["ddp"]["parameters"]
    assert rows["ddp"]["numbers_per_step"] == total and rows["ddp"]["speed_vs_ddp"] == 1.0
    # the losses, then every gradient once
    assert (rows["baseline"]["collectives_per_step"], rows["baseline"]["numbers_per_step"]) == (2, T + total)
    assert rows["uw"]["numbers_per_step"] == T + total
    # + the T x T Gram matrix; + GradDrop's batch sums [T, F]
    assert (rows["mgda@representation"]["collectives_per_step"], rows["mgda@representation"]["numbers_per_step"]) == (
        3,
        T + T * T + total,
    )
    assert rows["graddrop"]["numbers_per_step"] == T + T * REP + total
    # params: the T per-task gradients of the P shared parameters replace the trunk's gradient
    shared, rest = divmod(rows["mgda@params"]["numbers_per_step"] - T - total, T - 1)
    assert rest == 0 and 0 < shared < total
    for r in rows.values():
        assert r["ms_per_step"] > 0 and r["traffic_vs_ddp"] >= 1.0
    assert "| mgda | params |" in proc.stdout

"""Smoke test of scripts/bench_step.py on a tiny problem: it runs, and the JSON has its fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_step.py"
#: the script on a tiny random problem's model, on the CPU
TINY_PROBLEM = [
    sys.executable,
    str(SCRIPT),
    "model=small_cnn",
    "model.width=4",
    "model.rep_dim=8",
    "trainer.device=cpu",
]


def test_bench_step_tiny_problem(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        *TINY_PROBLEM,
        "--num-tasks",
        "3",
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--slow-steps",
        "1",
        "--combiners",
        "graddrop,pcgrad@params,pcgrad@representation,mgda@params,torchjd-pcgrad@params",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows)[0] == "baseline"  # always added, first
    for name in ("baseline", "graddrop", "pcgrad@params", "pcgrad@representation", "mgda@params"):
        row = rows[name]
        for key in ("combiner", "level", "ms_per_step", "speed_vs_baseline", "peak_memory_mib", "steps"):
            assert key in row, (name, key)
        assert row["error"] is None and row["ms_per_step"] > 0 and row["speed_vs_baseline"] > 0
    assert rows["pcgrad@params"]["level"] == "params" and rows["pcgrad@representation"]["level"] == "representation"
    assert rows["pcgrad@params"]["steps"] == 1 and rows["graddrop"]["steps"] == 2
    assert rows["baseline"]["speed_vs_baseline"] == 1.0
    for key in ("problem", "machine", "command", "protocol", "torchjd", "skipped"):
        assert key in report
    assert report["problem"]["num_tasks"] == 3 and report["problem"]["input_shape"] == [4, 3, 8, 8]
    # the markdown table is printed, one line per row (torchjd's row: measured, or said skipped)
    assert "| combiner | level | ms / step | speed vs baseline |" in proc.stdout
    if report["torchjd"] is None:
        assert "torchjd is not installed" in proc.stderr
        assert [s["row"] for s in report["skipped"]] == ["torchjd-pcgrad@params"]
    else:
        assert rows["torchjd-pcgrad@params"]["combiner"] == "torchjd-pcgrad"


def test_bench_step_says_when_torchjd_is_absent(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torchjd.py").write_text("raise ImportError('hidden for the test')\n")
    out = tmp_path / "bench.json"
    args = [
        *TINY_PROBLEM,
        "--num-tasks",
        "2",
        "--image-size",
        "8",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--combiners",
        "baseline,torchjd-mgda@params",
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "torchjd is not installed" in proc.stderr
    report = json.loads(out.read_text())
    assert report["torchjd"] is None
    assert [s["row"] for s in report["skipped"]] == ["torchjd-mgda@params"]
    assert [r["row"] for r in report["rows"]] == ["baseline"]
    assert "torchjd is not installed" in proc.stdout  # in the table too


def test_bench_step_rows_outside_the_trainer_with_mlp_heads(tmp_path):
    """The layer and mtbench.backward rows run, with linear and with MLP heads."""
    for heads in ("linear", "mlp"):
        out = tmp_path / f"bench-{heads}.json"
        rows = "layer-graddrop,layer-random_graddrop,backward-graddrop,backward-mgda,backward-pcgrad"
        args = [*TINY_PROBLEM,
                "--num-tasks", "3", "--image-size", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--no-memory",
                "--heads", heads, "--combiners", rows, "--out", str(out)]  # fmt: skip
        proc = subprocess.run(
            args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text())
        got = {r["row"]: r for r in report["rows"]}
        assert list(got) == ["baseline", *rows.split(",")]
        assert all(r["error"] is None and r["ms_per_step"] > 0 for r in got.values()), got
        assert (
            got["backward-mgda"]["level"] == "representation" and got["layer-graddrop"]["combiner"] == "layer-graddrop"
        )
        assert ("two-layer heads" in report["problem"]["description"]) == (heads == "mlp")


def test_bench_solvers_times_every_solver(tmp_path):
    """scripts/bench_solvers.py on a tiny Gram matrix: a row per solver and T, the JSON written;
    an unknown row is a one-line error with exit status 2."""
    script = ROOT / "scripts" / "bench_solvers.py"
    out = tmp_path / "solvers.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--tasks", "3,5", "--seconds", "0.01", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    names = {r["solver"] for r in report["rows"]}
    assert {"mgda", "mgda-cold", "upgrad", "upgrad-quadprog", "fairgrad", "fairgrad-scipy", "cagrad"} <= names
    assert len(report["rows"]) == 2 * len(names)
    assert all(r["ms_per_call"] > 0 and r["calls"] >= 3 for r in report["rows"])
    assert "| solver | T = 3 (ms) | T = 5 (ms) |" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--solvers", "nope", "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "unknown row 'nope'" in bad.stderr
    assert not (tmp_path / "x.json").exists()

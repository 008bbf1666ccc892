"""Excess-MTL against torchjd's stateful ``ExcessMTLWeighting`` over several steps on the same
float64 matrices (adversarial ones included, with and without warm-up), times the documented
factor T; the combiner's update against autograd's per-task gradients, its state across a
checkpoint, its option errors and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchjd.aggregation as jd
from conftest import TINY, run_cli, run_dir
from paramrows_cases import (
    MATS,
    T,
    assert_resumes_to_the_same_updates,
    autograd_rows,
    make_model,
    make_step,
    moved,
    shared_grad,
)

from mtbench.combiners import COMBINERS
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError


@pytest.mark.parametrize("matrix", list(MATS))
@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("step_size", [1.0, 0.05])
def test_equals_torchjd_times_T_over_steps(matrix, warmup, step_size):
    J = MATS[matrix]
    n = J.shape[0]
    ref = jd.ExcessMTLWeighting(robust_step_size=step_size, n_warmup_steps=warmup)
    state = None
    for k in range(5):
        Jk = moved(J, k)
        ours, state = F.excess_mtl_state(Jk, state, step_size, warmup)
        theirs = n * ref(Jk)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12 * n)
        assert math.isclose(float(ours.sum()), n, rel_tol=1e-12)
    assert state["steps"] == 5 and state["sq_sum"].shape == J.shape


def test_the_pure_function_is_torchjds_aggregator_times_T():
    J = MATS["random"]
    torch.testing.assert_close(F.excess_mtl(J), J.shape[0] * jd.ExcessMTL()(J), rtol=1e-10, atol=1e-10)
    agreeing = MATS["agreeing"]
    torch.testing.assert_close(F.excess_mtl(agreeing), 3 * agreeing[0])  # the baseline's sum


def test_the_combiner_combines_autograds_per_task_gradients_with_those_weights():
    model = make_model()
    comb = COMBINERS["excess_mtl"](T, robust_step_size=0.5)
    state = None
    for seed in (1, 2, 3):
        rows, heads, _ = autograd_rows(model, seed)
        weights, state = F.excess_mtl_state(rows, state, 0.5, 0)
        model.zero_grad(set_to_none=True)
        comb.backward(make_step(model, seed))
        torch.testing.assert_close(shared_grad(model), weights @ rows, rtol=1e-10, atol=1e-12)
        for p, h in zip(model.heads.parameters(), heads):  # each head: its own loss's gradient
            torch.testing.assert_close(p.grad, h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(comb.last_weights, weights)


def test_state_resumes_to_the_same_updates():
    saved = assert_resumes_to_the_same_updates(lambda: COMBINERS["excess_mtl"](T, n_warmup_steps=1))
    assert saved["sq_sum"].shape == (T, sum(p.numel() for p in make_model().trunk.parameters()))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("robust_step_size", 0, "combiner.robust_step_size must be a finite number > 0 (got 0)"),
        ("n_warmup_steps", -1, "combiner.n_warmup_steps must be an integer >= 0 (got -1)"),
        ("n_warmup_steps", 1.5, "combiner.n_warmup_steps must be an integer >= 0 (got 1.5)"),
        ("level", "representation", None),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(option, value, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["excess_mtl"](T, **{option: value})
    if message is None:  # no level: the method is defined at the shared parameters only
        assert str(err.value).startswith("combiner.level is not an option of combiner=excess_mtl; its options are: ")
    else:
        assert str(err.value) == message


@pytest.mark.slow
def test_excess_mtl_and_db_mtl_run_from_the_command_line(tmp_path):
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["-m", "combiner=excess_mtl,db_mtl", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("excess_mtl", "db_mtl"):
        m = json.loads((run_dir(tmp_path / "results" / "shapes40", name) / "metrics.json").read_text())
        assert m["status"] == "completed" and math.isfinite(m["test"]["error_rate"]), (name, m.get("reason"))


@pytest.mark.slow
def test_bench_step_times_the_new_methods_the_per_parameter_ones_as_slow_rows(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_step.py"
    out = tmp_path / "bench.json"
    args = [sys.executable, str(script), "model=small_cnn", "model.width=4", "model.rep_dim=8", "trainer.device=cpu"]
    args += ["trainer.num_threads=1", "--num-tasks", "3", "--image-size", "8", "--batch-size", "4", "--steps", "2"]
    args += ["--warmup", "1", "--slow-steps", "1", "--no-memory", "--out", str(out)]
    args += ["--combiners", "pcd@representation,cr_mogm@representation,excess_mtl,db_mtl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("pcd@representation", "cr_mogm@representation", "excess_mtl", "db_mtl"):
        assert rows[name]["error"] is None and rows[name]["ms_per_step"] > 0, name
    assert rows["pcd@representation"]["steps"] == 2
    assert rows["excess_mtl"]["steps"] == 1 and rows["db_mtl"]["steps"] == 1  # T backward passes: slow rows

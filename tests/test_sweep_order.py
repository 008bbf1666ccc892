"""The run order of ``mtbench -m``: the combiners alternate (hydra/sweeper=interleaved)."""

from __future__ import annotations

import itertools
import re

from conftest import TINY, run_cli

from mtbench.sweep_order import combiner_last


def test_combiner_last_is_the_product_with_combiner_varying_fastest():
    values = {"combiner": ["baseline", "clip", "mgda"], "seed": ["0", "1"], "trainer.lr": ["0.1", "0.01"]}
    # the basic sweeper's jobs: the product in the keys' order, the last key fastest
    jobs = [[f"{k}={v}" for k, v in zip(values, combo)] for combo in itertools.product(*values.values())]
    got = combiner_last(jobs)
    want = [
        [f"combiner={c}", f"seed={s}", f"trainer.lr={lr}"]
        for s, lr, c in itertools.product(values["seed"], values["trainer.lr"], values["combiner"])
    ]
    assert got == want
    assert sorted(map(tuple, got)) == sorted(map(tuple, jobs))  # the same runs, reordered


def test_combiner_last_leaves_sweeps_without_combiner_alone():
    jobs = [["seed=1", "x=a"], ["seed=1", "x=b"], ["seed=0", "x=a"]]
    assert combiner_last(jobs) == jobs
    assert combiner_last([]) == []


def _order(out: str) -> list[tuple[str, str]]:
    return re.findall(r"#\d+ : combiner=(\w+) seed=(\d)", out)


def test_a_sweep_runs_every_combiner_of_a_seed_in_turn(tmp_path):
    args = ["-m", "combiner=baseline,clip", "seed=0,1", "trainer.epochs=1", f"results_dir={tmp_path}"]
    proc = run_cli("mtbench", args + [a for a in TINY if not a.startswith("trainer.epochs")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _order(proc.stdout + proc.stderr) == [("baseline", "0"), ("clip", "0"), ("baseline", "1"), ("clip", "1")]
    for combiner in ("baseline", "clip"):
        assert len(list((tmp_path / "shapes40" / "runs" / combiner).glob("*/seed=*/metrics.json"))) == 2


def test_hydras_basic_sweeper_keeps_its_own_order(tmp_path):
    args = ["-m", "hydra/sweeper=basic", "combiner=baseline,clip", "seed=0,1", "trainer.epochs=1"]
    args += [f"results_dir={tmp_path}"] + [a for a in TINY if not a.startswith("trainer.epochs")]
    proc = run_cli("mtbench", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _order(proc.stdout + proc.stderr) == [("baseline", "0"), ("baseline", "1"), ("clip", "0"), ("clip", "1")]

"""The two forms of each two-form solver agree (scripts/bench_solvers.py --forms), and
scripts/compare_metrics.py finds every differing metrics.json field but no timing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_both_forms_give_the_same_weights_on_both_sides_of_the_switch(tmp_path):
    bench = _script("bench_solvers")
    out = tmp_path / "forms.json"
    report = bench.main(["--forms", "--tasks", "5,64", "--seconds", "0", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == report["rows"]
    assert {(r["algorithm"], r["tasks"]) for r in rows} == {(a, t) for a in bench.FORMS for t in (5, 64)}
    for r in rows:
        assert r["compiled_ms"] > 0 and r["batched_ms"] > 0
        assert r["max_rel_diff"] <= 1e-6, r  # (the Newton forms stop at rounding level: about 1e-8)


def test_compare_metrics_reports_each_differing_field_and_skips_timings(tmp_path, capsys):
    compare = _script("compare_metrics")
    run = {"test": {"error_rate": 42.5, "max_f1": 48.0}, "status": "completed", "wall_s": 5.0, "load": {"max_1m": 1}}
    for side in ("before", "after"):
        for seed in (0, 1):
            folder = tmp_path / side / "runs" / "mgda" / "default" / f"seed={seed}"
            folder.mkdir(parents=True)
            changed = dict(run, wall_s=9.0, load={"max_1m": 7}) if side == "after" else run
            (folder / "metrics.json").write_text(json.dumps(changed))
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    other = tmp_path / "after" / "runs" / "mgda" / "default" / "seed=1" / "metrics.json"
    other.write_text(json.dumps(dict(run, test={"error_rate": 42.5 + 1e-13, "max_f1": 48.0})))
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 1
    out = capsys.readouterr().out
    assert "seed=1" in out and ".test.error_rate" in out and "seed=0" not in out and "max_f1" not in out

"""The speed column measured after a sweep (``mtbench.report.speed``): interleaved steps of every
swept combiner, the baseline against itself as the spread, no bold inside that spread."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import TINY, run_cli

from mtbench.report import speed


def _table(speeds: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"combiner": c, "variant": "default", "speed_mean": s, "speed_std": math.nan} for c, s in speeds.items()]
    )


def test_apply_takes_the_measurement_and_boldable_needs_the_spread(tmp_path):
    (tmp_path / speed.SPEED_FILE).write_text(
        json.dumps(
            {
                "rounds": 20,
                "device": "cpu",
                "threads": 1,
                "seconds": 3.0,
                "baseline": {"combiner": "baseline", "variant": "default"},
                "baseline_spread": [0.9, 1.1],
                "rows": [
                    {"combiner": "baseline", "variant": "default", "repeat": False, "speed": 1.02, "speed_std": 0.05},
                    {"combiner": "mgda", "variant": "default", "repeat": False, "speed": 1.05, "speed_std": 0.05},
                    {"combiner": "pcgrad", "variant": "default", "repeat": False, "speed": 0.40, "speed_std": 0.02},
                ],
            }
        )
    )
    table = speed.apply(_table({"baseline": 1.0, "mgda": 1.78, "pcgrad": 0.9, "clip": 1.0}), tmp_path)
    got = table.set_index("combiner")
    assert got.loc["baseline", "speed_mean"] == 1.0  # by definition
    assert got.loc["mgda", "speed_mean"] == 1.05 and got.loc["pcgrad", "speed_mean"] == 0.40  # not the runs' own
    assert math.isnan(got.loc["clip", "speed_mean"])  # not measured: no number rather than a wrong one
    # mgda is the fastest, but inside the baseline's own spread: not bold
    assert speed.boldable(table, {1}) == set()
    table.loc[table["combiner"] == "mgda", "speed_mean"] = 1.3
    assert speed.boldable(table, {1}) == {1}
    assert "The baseline against itself: 0.90 to 1.10" in speed.notes(tmp_path)[0]


def test_without_a_measurement_the_baseline_seeds_spread_decides():
    table = _table({"baseline": 1.0, "mgda": 1.04}).assign(
        reference="default", step_s_mean=[0.10, 0.09], step_s_std=[0.01, 0.0]
    )
    assert speed.boldable(table, {1}) == set()  # 1.04 is within 1 +- 0.10
    table.loc[1, "speed_mean"] = 1.2
    assert speed.boldable(table, {1}) == {1}
    assert speed.boldable(table.assign(step_s_std=math.nan), {1}) == set()  # one seed: no spread, no bold


@pytest.mark.slow
def test_a_sweep_measures_its_speed_column(tmp_path):
    # modo: a combiner of two batches per step is measured with a second batch too
    result = run_cli("mtbench", ["-m", "combiner=baseline,pcgrad,modo", "combiner.level=params", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "results" / "shapes40"
    data = json.loads((folder / speed.SPEED_FILE).read_text())
    rows = {r["combiner"]: r for r in data["rows"]}
    assert set(rows) == {"baseline", "pcgrad", "modo"} and data["rounds"] >= 20
    lo, hi = data["baseline_spread"]
    assert lo <= 1.0 <= hi  # the baseline against itself straddles 1
    # PCGrad at the parameter level takes T backward passes a step: slower than the baseline
    assert rows["pcgrad"]["speed"] < lo and rows["modo"]["speed"] < lo
    table = pd.read_csv(folder / "table.csv").set_index("combiner")
    assert table.loc["pcgrad", "speed_mean"] == pytest.approx(rows["pcgrad"]["speed"])
    md = (folder / "table.md").read_text()
    assert "measured after the sweep" in md
    # each run keeps its own timings
    (metrics,) = (folder / "runs" / "pcgrad").glob("*/seed=0/metrics.json")
    assert json.loads(metrics.read_text())["train_step_s"] > 0
    assert not (tmp_path / "results" / ".sweeps").exists()

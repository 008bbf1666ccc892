"""Hydra's Optuna sweeper over any option: each trial is its own variant folder, the app
returns the validation select metric, the sweeper's direction follows the metric."""

from __future__ import annotations

import importlib.util
import json
import os

import pandas as pd
import pytest
import yaml
from conftest import TINY, run_cli

SMALL = [o for o in TINY if not o.startswith("trainer.epochs")] + ["trainer.epochs=1", "trainer.progress=false"]

if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
    if os.environ.get("CI"):  # .ci/run installs the extra: the test must run there
        raise ImportError("hydra-optuna-sweeper is missing: pip install -e '.[optuna]'")
    pytest.skip("needs the optuna extra: pip install -e '.[optuna]'", allow_module_level=True)


@pytest.mark.parametrize("metric, direction, best", [("error_rate", "minimize", min), ("max_f1", "maximize", max)])
def test_two_optuna_trials(tmp_path, metric, direction, best):
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "trainer.lr=interval(1e-4,1e-2)",
            "combiner=graddrop", f"trainer.select_metric={metric}", *SMALL]  # fmt: skip
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Directions: ['{direction}']" in proc.stdout + proc.stderr
    folder = tmp_path / "results" / "shapes40"
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("runs/graddrop/*/seed=0/metrics.json"))]
    assert len(runs) == 2 and all(m["status"] == "completed" for m in runs)
    assert len({m["variant"] for m in runs}) == 2 and all("trainer.lr" in m["overrides"] for m in runs)
    # the sweeper saw the validation select metric of each trial and kept the best one
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(best(m["val"][metric] for m in runs))
    table = pd.read_csv(folder / "table.csv")
    assert len(table) == 2 and set(table["variant"]) == {m["variant"] for m in runs}
    tuned = pd.read_csv(folder / "table_tuned.csv")
    chosen = best(runs, key=lambda m: m["val"][metric])
    assert len(tuned) == 1 and tuned["variants_tried"].iloc[0] == 2 and tuned["variant"].iloc[0] == chosen["variant"]

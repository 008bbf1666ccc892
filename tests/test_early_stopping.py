"""``trainer.early_stopping.patience``: a run stops once that many epochs in a row have not
improved the selection metric on the validation split, and metrics.json says where."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY, run_cli, run_dir

from mtbench.errors import MtbenchError
from mtbench.train.options import check_trainer


def test_bad_patience_is_one_line():
    from omegaconf import OmegaConf

    for value, match in [(0, "trainer.early_stopping.patience"), ("x", "trainer.early_stopping.patience")]:
        with pytest.raises(MtbenchError, match=match):
            check_trainer(OmegaConf.create({"early_stopping": {"patience": value}}))
    with pytest.raises(MtbenchError, match="has patience only"):
        check_trainer(OmegaConf.create({"early_stopping": {"patiense": 2}}))
    check_trainer(OmegaConf.create({"early_stopping": {"patience": None}}))


@pytest.mark.slow
def test_a_run_stops_after_patience_epochs_without_improvement(tmp_path):
    # a learning rate of ~0 keeps the validation metric flat after epoch 1: no epoch beats it
    args = [a for a in TINY if not a.startswith("trainer.epochs")]
    args += ["trainer.epochs=6", "trainer.lr=1e-12", "trainer.scheduler=none", "trainer.early_stopping.patience=2"]
    proc = run_cli("mtbench", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_dir(tmp_path / "results" / "shapes40", "baseline")
    metrics = json.loads((folder / "metrics.json").read_text())
    history = pd.read_csv(folder / "history.csv")
    best = metrics["best_epoch"]
    # the independent check: the first epoch at which `patience` epochs have passed since the best one
    val = history[f"val_{metrics['select_metric']}"].tolist()
    assert list(history["epoch"]) == list(range(1, best + 3)) and len(history) < 6
    assert all(v >= val[best - 1] for v in val[best:])  # error rate: none after the best is better
    assert metrics["early_stopping"] == {
        "patience": 2,
        "metric": metrics["select_metric"],
        "stopped_at_epoch": best + 2,
    }
    assert metrics["status"] == "completed"

"""trainer.diagnostics: the per-epoch statistics against hand computations, GradDrop's kept
fraction, the training numbers unchanged with the diagnostics on, and the CLI's files
(history.csv's diag_* columns, conflict.png, mtbench-table --diagnostics)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from hydra import compose, initialize_config_module

from mtbench.combiners import build_combiner
from mtbench.combiners.functional import graddrop, graddrop_factored
from mtbench.train.diagnostics import Diagnostics, gram_statistics, weight_statistics

# -- the statistics --------------------------------------------------------------------------


def test_gram_statistics_by_hand():
    """g1 = (1, 0), g2 = (0, 2), g3 = (-1, 1): norms 1, 2, sqrt 2; cosines 0, -1/sqrt 2, 1/sqrt 2."""
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    stats = gram_statistics(g @ g.T)
    assert torch.allclose(stats["gnorm"], torch.tensor([1.0, 2.0, math.sqrt(2)], dtype=torch.float64))
    assert float(stats["cos_mean"]) == pytest.approx(0.0, abs=1e-15)
    assert float(stats["cos_min"]) == pytest.approx(-1 / math.sqrt(2))
    assert float(stats["conflict_frac"]) == pytest.approx(1 / 3)


def test_gram_statistics_against_numpy_on_random_vectors():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(7, 30))
    stats = gram_statistics(torch.from_numpy(g @ g.T))
    norms = np.linalg.norm(g, axis=1)
    cos = [g[i] @ g[j] / (norms[i] * norms[j]) for i in range(7) for j in range(i + 1, 7)]
    dots = [g[i] @ g[j] for i in range(7) for j in range(i + 1, 7)]
    assert np.allclose(stats["gnorm"].numpy(), norms)
    assert float(stats["cos_mean"]) == pytest.approx(np.mean(cos))
    assert float(stats["cos_min"]) == pytest.approx(np.min(cos))
    assert float(stats["conflict_frac"]) == pytest.approx(np.mean(np.array(dots) < 0))


def test_gram_statistics_zero_gradient_and_one_task():
    """A pair with a zero gradient: cosine 0, no conflict; one task: norms only."""
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    stats = gram_statistics(g @ g.T)
    assert float(stats["cos_mean"]) == pytest.approx(-1 / 3)  # (0 + 0 - 1) / 3
    assert float(stats["cos_min"]) == pytest.approx(-1.0)
    assert float(stats["conflict_frac"]) == pytest.approx(1 / 3)
    one = gram_statistics(torch.tensor([[4.0]], dtype=torch.float64))
    assert set(one) == {"gnorm"} and float(one["gnorm"][0]) == 2.0


def test_weight_statistics_by_hand():
    stats = weight_statistics(torch.tensor([1.0, 1.0, 2.0]))
    p = np.array([0.25, 0.25, 0.5])
    assert float(stats["w_min"]) == 1.0 and float(stats["w_max"]) == 2.0
    assert float(stats["w_entropy"]) == pytest.approx(-(p * np.log(p)).sum() / np.log(3))
    assert float(weight_statistics(torch.ones(5))["w_entropy"]) == pytest.approx(1.0)
    assert float(weight_statistics(torch.tensor([0.0, 3.0, 0.0]))["w_entropy"]) == pytest.approx(0.0)
    assert math.isnan(float(weight_statistics(torch.zeros(3))["w_entropy"]))


class _Fixed:
    """A combiner stand-in: a given Gram matrix and weights per step."""

    diagnostics = False
    diagnostics_gram = None
    last_weights = None

    def computes_gram(self):
        return True

    def diagnostic_values(self):
        return {}


def test_epoch_values_are_means_over_steps_and_survive_a_checkpoint():
    comb = _Fixed()
    diag = Diagnostics(comb, ["a", "b"])
    assert comb.diagnostics is True
    grams = [torch.tensor([[1.0, -1.0], [-1.0, 4.0]]), torch.tensor([[4.0, 2.0], [2.0, 1.0]])]
    weights = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])]
    diag.before(None)
    comb.diagnostics_gram, comb.last_weights = grams[0], weights[0]
    diag.after(None)
    saved = diag.state_dict()
    resumed = Diagnostics(_Fixed(), ["a", "b"])
    resumed.load_state_dict(json.loads(json.dumps(saved)))  # plain lists
    for d in (diag, resumed):
        d.before(None)
        d.combiner.diagnostics_gram, d.combiner.last_weights = grams[1], weights[1]
        d.after(None)
    row, again = diag.epoch_values(), resumed.epoch_values()
    assert row == again
    assert row["diag_cos_mean"] == pytest.approx((-0.5 + 1.0) / 2)
    assert row["diag_cos_min"] == pytest.approx((-0.5 + 1.0) / 2)
    assert row["diag_conflict_frac"] == pytest.approx(0.5)
    assert row["diag_gnorm_a"] == pytest.approx(1.5) and row["diag_gnorm_b"] == pytest.approx(1.5)
    assert row["diag_w_min"] == pytest.approx(1.5) and row["diag_w_max"] == pytest.approx(2.5)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert row["diag_w_entropy"] == pytest.approx((h1 + 1.0) / 2)
    assert diag.epoch_values() == {}  # the next epoch starts empty


# -- GradDrop's kept fraction ----------------------------------------------------------------


def _kept_by_hand(grads, activation, seed):
    """Algorithm 1's masks, computed here: the kept share of the non-zero signed entries."""
    signed = (grads * torch.sign(activation).unsqueeze(0)).sum(1)
    purity = 0.5 * (1 + signed.sum(0) / (signed.abs().sum(0) + 1e-7))
    u = torch.rand(purity.shape, generator=torch.Generator().manual_seed(seed), dtype=grads.dtype)
    keep = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))
    return keep.sum().item() / (signed != 0).sum().item()


def test_graddrop_kept_fraction():
    torch.manual_seed(0)
    e, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    grads = e.T.unsqueeze(-1) * w.unsqueeze(1)  # [T, B, D]
    act = torch.randn(6, 9, dtype=torch.float64)
    stats: dict = {}
    graddrop(grads, act, generator=torch.Generator().manual_seed(3), stats=stats)
    assert stats["kept"].item() / stats["signed"].item() == pytest.approx(_kept_by_hand(grads, act, 3))
    factored: dict = {}
    graddrop_factored(e, w, act, generator=torch.Generator().manual_seed(3), stats=factored)
    assert factored["kept"].item() == stats["kept"].item() and factored["signed"].item() == stats["signed"].item()
    # per element (no activation): the factored counts equal the stacked masks' counts
    plain: dict = {}
    graddrop(grads, None, generator=torch.Generator().manual_seed(4), stats=plain)
    fac: dict = {}
    graddrop_factored(e, w, None, generator=torch.Generator().manual_seed(4), stats=fac)
    assert fac["kept"].item() == pytest.approx(plain["kept"].item())
    assert fac["signed"].item() == pytest.approx(plain["signed"].item())
    out_with = graddrop(grads, act, generator=torch.Generator().manual_seed(3), stats={})
    out_without = graddrop(grads, act, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out_with, out_without)


# -- the training numbers are the same with the diagnostics on -----------------------------

QUICK = [*TINY, "trainer.epochs=2", "trainer.max_steps_per_epoch=2", "trainer.progress=false"]


@pytest.fixture(scope="module")
def compose_cfg():
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        yield lambda overrides: compose("config", overrides=overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    "combiner",
    [
        ["combiner=baseline"],
        ["combiner=pcgrad", "combiner.level=representation"],
        ["combiner=mgda", "combiner.level=params"],
        ["combiner=graddrop"],
        ["combiner=gradnorm_graddrop"],
        ["combiner=uw"],
    ],
    ids=lambda c: "-".join(o.split("=", 1)[1] for o in c),
)
def test_diagnostics_change_no_training_number(compose_cfg, combiner):
    from mtbench.train import loop

    off = loop.train(compose_cfg([*QUICK, *combiner]))
    on = loop.train(compose_cfg([*QUICK, *combiner, "trainer.diagnostics=true"]))
    assert on["test"] == off["test"] and on["val"] == off["val"]
    for a, b in zip(off["history"], on["history"]):
        assert {k: v for k, v in b.items() if not k.startswith("diag_") and k != "train_step_s"} == {
            k: v for k, v in a.items() if k != "train_step_s"
        }
    assert not any(k.startswith("diag_") for k in off["history"][0])
    row = on["history"][-1]
    assert -1.0 <= row["diag_cos_min"] <= row["diag_cos_mean"] <= 1.0
    assert 0.0 <= row["diag_conflict_frac"] <= 1.0
    assert sum(k.startswith("diag_gnorm_") for k in row) == 40  # shapes40: one per task
    weighted = combiner[0] != "combiner=baseline" and combiner[0] != "combiner=graddrop"
    assert ("diag_w_entropy" in row) == weighted
    assert ("diag_graddrop_kept" in row) == ("graddrop" in combiner[0])
    if "diag_graddrop_kept" in row:
        assert 0.0 < row["diag_graddrop_kept"] < 1.0


@pytest.mark.slow
def test_resumed_epoch_has_the_uninterrupted_columns(compose_cfg, tmp_path):
    """Interrupted after a step of epoch 1 and resumed: the diag_* columns of that epoch equal
    an uninterrupted run's (the running sums are in the checkpoint)."""
    import signal
    from types import SimpleNamespace

    from mtbench.train import Interrupted, loop

    args = [*TINY, "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.progress=false"]
    cfg = compose_cfg([*args, "combiner=pcgrad", "combiner.level=representation", "trainer.diagnostics=true"])
    whole = loop.train(cfg, run_dir=tmp_path / "whole")
    trainer = loop.Trainer(cfg, tmp_path / "cut")
    with pytest.raises(Interrupted):
        trainer.train_epoch(SimpleNamespace(signum=signal.SIGTERM))  # stops after its first step
    assert trainer.state.step == 1 and trainer.state.diagnostics
    resumed = loop.train(cfg, run_dir=tmp_path / "cut")
    (a,), (b,) = whole["history"], resumed["history"]
    diag = [k for k in a if k.startswith("diag_")]
    assert diag and {k: a[k] for k in diag} == pytest.approx({k: b[k] for k in diag}, rel=1e-12)


def test_option_is_checked(compose_cfg):
    from mtbench.errors import MtbenchError
    from mtbench.train.options import check_trainer

    with pytest.raises(MtbenchError, match="trainer.diagnostics"):
        check_trainer(compose_cfg(["trainer.diagnostics=maybe"]).trainer)


def test_reweighted_reports_its_pieces():
    """gradnorm_graddrop: GradNorm's weights, GradDrop's Gram matrix and kept fraction."""
    from omegaconf import OmegaConf

    comb = build_combiner(OmegaConf.create({"name": "gradnorm_graddrop"}), 3)
    assert not comb.weighting.diagnostics and not comb.combine.diagnostics
    comb.diagnostics = True
    assert comb.weighting.diagnostics and comb.combine.diagnostics and comb.computes_gram()
    comb.combine.diagnostics_gram = torch.eye(3)
    assert comb.diagnostics_gram is comb.combine.diagnostics_gram
    comb.weighting.last_weights = torch.ones(3)
    assert comb.last_weights is comb.weighting.last_weights


# -- the report: the table's column and conflict.png, from runs written to disk -------------


def _runs_with_diagnostics(tmp_path):
    import pandas as pd
    from test_report import write_run

    folder = tmp_path / "results" / "celeba"
    conflict = {"baseline": [[0.5, 0.3], [0.2, 0.2]], "pcgrad": [[0.1, 0.3], [0.4, 0.4]]}
    for name, per_seed in conflict.items():
        for seed, values in enumerate(per_seed):
            run = write_run(folder, name, seed, 9.0 + seed, 29.0, 0.01, cpu_s=0.01, epochs=2)
            history = pd.read_csv(run / "history.csv")
            history["diag_conflict_frac"] = values
            history["diag_cos_mean"] = [0.1, 0.2]
            history["diag_cos_min"] = [-0.3, -0.2]
            if name == "pcgrad":
                history["diag_w_entropy"] = [0.9, 0.95]
            history.to_csv(run / "history.csv", index=False)
    write_run(folder, "mgda", 0, 9.0, 29.0, 0.01, cpu_s=0.01, epochs=2)  # trained without diagnostics
    return folder


def test_table_conflict_column(tmp_path):
    from mtbench.report.table import build_tables

    folder = _runs_with_diagnostics(tmp_path)
    plain = build_tables(folder)
    assert "conflict_frac_mean" not in plain.frame.columns and "conflict" not in plain.markdown
    tables = build_tables(folder, diagnostics=True)
    frame = tables.frame.set_index("combiner")
    # per run the mean over epochs (0.4, 0.2 | 0.2, 0.4), then over seeds
    assert frame.loc["baseline", "conflict_frac_mean"] == pytest.approx(0.3)
    assert frame.loc["baseline", "conflict_frac_std"] == pytest.approx(np.std([0.4, 0.2], ddof=1))
    assert frame.loc["pcgrad", "conflict_frac_mean"] == pytest.approx(0.3)
    assert math.isnan(frame.loc["mgda", "conflict_frac_mean"])
    head, _, *rows = tables.markdown.splitlines()
    assert "| conflict frac |" in head
    col = [c.strip() for c in head.split("|")].index("conflict frac")
    cells = {r.split("|")[1].strip(): r.split("|")[col].strip() for r in rows[:3]}
    assert cells == {"baseline": "0.30 ± 0.14", "mgda": "n/a", "pcgrad": "0.30 ± 0.14"}  # never bold
    assert "Conflict frac:" in tables.markdown


def test_conflict_plot_only_with_diagnostics(tmp_path):
    from mtbench.report.load import load_runs
    from mtbench.report.plots import conflict_figure, load_histories

    folder = _runs_with_diagnostics(tmp_path)
    runs = load_runs(folder)[0]
    histories = load_histories(runs[runs["status"] == "completed"])
    fig = conflict_figure(histories, "celeba")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert len(labels) == 3 and "entropy" in labels[2]
    lines = {line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert lines == {"baseline", "pcgrad"}  # one line per combiner with the columns (mgda has none)
    assert conflict_figure(histories.drop(columns=[c for c in histories if c.startswith("diag_")]), "x") is None


def test_every_logger_gets_the_diag_columns(tmp_path, monkeypatch):
    """The loggers take every number of a history row: the diag_* columns included."""
    from omegaconf import OmegaConf

    from mtbench.report import loggers

    got = []

    class Recording(loggers.Logger):
        def epoch(self, step, values):
            got.append((step, values))

    monkeypatch.setitem(loggers.CLASSES, "tensorboard", Recording)
    run = loggers.RunLoggers(OmegaConf.create({"tensorboard": {}}), tmp_path, tmp_path)
    row = {"epoch": 1, "train_loss": 0.5, "diag_cos_mean": 0.1, "diag_conflict_frac": 0.4, "diag_gnorm_a": 2.0}
    run.history([row])
    assert got == [(1, {"train_loss": 0.5, "diag_cos_mean": 0.1, "diag_conflict_frac": 0.4, "diag_gnorm_a": 2.0})]


# -- the CLI: history.csv, conflict.png, mtbench-table --diagnostics ----------------------


@pytest.mark.slow
def test_cli_history_plot_and_table(tmp_path):
    args = [*TINY, "trainer.epochs=2", "trainer.diagnostics=true", "-m", "combiner=baseline,pcgrad"]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "results" / "shapes40"
    for name in ("baseline", "pcgrad"):
        (history,) = (folder / "runs" / name).rglob("history.csv")
        rows = list(csv.DictReader(history.open()))
        assert len(rows) == 2 and 0.0 <= float(rows[-1]["diag_conflict_frac"]) <= 1.0
    assert (folder / "conflict.png").stat().st_size > 1000
    table = run_cli("mtbench-table", [str(folder), "--diagnostics", "--no-plots"], cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    header = (folder / "table.csv").read_text().splitlines()[0]
    assert "conflict_frac" in header
    assert "conflict" in (folder / "table.md").read_text()


@pytest.mark.slow
def test_bench_diag_rows(tmp_path):
    """scripts/bench_step.py's +diag rows: the same combiner with the diagnostics, its cost."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"
    out = tmp_path / "bench.json"
    args = [sys.executable, str(script), "model=small_cnn", "model.width=4", "model.rep_dim=8", "trainer.device=cpu"]
    args += ["--num-tasks", "3", "--image-size", "8", "--batch-size", "4", "--steps", "2", "--warmup", "1"]
    args += ["--no-memory", "--combiners", "baseline+diag,pcgrad@representation,pcgrad@representation+diag"]
    args += ["--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"baseline", "baseline+diag", "pcgrad@representation", "pcgrad@representation+diag"}
    for name in ("baseline+diag", "pcgrad@representation+diag"):
        assert rows[name]["error"] is None and rows[name]["diagnostics_cost"] > 0
        assert rows[name]["combiner"].endswith("+diag")
    assert rows["pcgrad@representation+diag"]["level"] == "representation"
    assert "the row without diagnostics" in proc.stdout

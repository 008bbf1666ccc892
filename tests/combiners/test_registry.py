"""The registry of combiners: its order, the one-line errors for bad options and missing solvers,
and each registered combiner run from the command line."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY, run_cli, run_dir
from gram_matrices import build
from loss_steps import LOSS_LEVEL
from model_steps import T

from mtbench.combiners import COMBINERS, PAPER, GramWeighted
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("pcgrad", {"levle": "params"}, ["combiner.levle", "level", "chunk_size"]),
        ("baseline", {"max_norm": 1}, ["combiner.max_norm", "combiner=baseline"]),
        ("graddrop", {"leak": [0.1, 0.2]}, ["combiner.leak", "2 values", "3 tasks"]),
        ("graddrop", {"leak": 1.5}, ["combiner.leak", "[0, 1]"]),
        ("graddrop", {"leak": [0.0, -0.1, 0.0]}, ["combiner.leak", "[0, 1]"]),
        ("graddrop", {"f": "tanh"}, ["combiner.f", "identity, linear, sigmoid"]),
        ("random_graddrop", {"f": "identity"}, ["combiner.f", "is not an option"]),
        ("mgda", {"normalization": "l1"}, ["combiner.normalization", "none, l2, loss, loss+"]),
        ("mgda", {"level": "input"}, ["combiner.level", "representation, params"]),
        ("clip", {"max_norm": -1}, ["combiner.max_norm", "positive"]),
        ("gradpenalty", {"lambda": -1}, ["combiner.lambda", ">= 0"]),
        ("gradnorm_graddrop", {"graddrop": {"leak": 2}}, ["combiner.graddrop.leak"]),
        ("gradnorm_graddrop", {"gradnorm": {"beta": 2}}, ["combiner.gradnorm.beta", "alpha"]),
    ],
)
def test_bad_options_name_the_option(name, options, words):
    with pytest.raises(MtbenchError) as err:
        COMBINERS[name](T, **options)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


NEW = ["upgrad", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl", "dualproj", "fairgrad", "config", "gradvac"]


def test_registered_after_the_papers_nine_and_gram_weighted():
    names = list(COMBINERS)
    assert names[:9] == [
        "baseline",
        "clip",
        "gradpenalty",
        "mgda",
        "pcgrad",
        "gradnorm",
        "random_graddrop",
        "graddrop",
        "gradnorm_graddrop",
    ]
    assert [n for n in names[9:] if n in NEW] == NEW  # after the nine (with any other additions)
    for name in NEW:
        cls = COMBINERS[name]
        assert issubclass(cls, GramWeighted) and cls.style is not None
        assert cls.defaults["level"] == "representation"
    styles = [COMBINERS[n].style for n in names]
    assert len(set(styles)) == len(styles)


@pytest.mark.parametrize(
    "name, option, value, message",
    [
        ("cagrad", "c", -0.1, "combiner.c must be a finite number >= 0 (got -0.1)"),
        ("fairgrad", "alpha", 0, "combiner.alpha must be a finite number > 0 (got 0)"),
        ("fairgrad", "alpha", -1.0, "combiner.alpha must be a finite number > 0 (got -1.0)"),
        ("gradvac", "beta", 1.5, "combiner.beta must be a finite number >= 0 and <= 1 (got 1.5)"),
        ("nash_mtl", "max_norm", -1.0, "combiner.max_norm must be a finite number >= 0 (got -1.0)"),
        ("nash_mtl", "update_weights_every", 0, "combiner.update_weights_every must be an integer >= 1 (got 0)"),
        (
            "aligned_mtl",
            "scale_mode",
            "max",
            "combiner.scale_mode='max' is not allowed for combiner=aligned_mtl; choose one of: min, median, rmse",
        ),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(name, option, value, message):
    with pytest.raises(MtbenchError) as err:
        build(name, **{option: value})
    assert str(err.value) == message


def test_a_missing_solver_is_one_line_naming_the_package_and_extra(monkeypatch):
    import importlib.util

    from mtbench.combiners import jd as bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a))
    with pytest.raises(MtbenchError) as err:
        build("upgrad")
    text = str(err.value)
    assert "\n" not in text and "quadprog" in text and "mtbench[zoo]" in text
    with pytest.raises(MtbenchError, match="quadprog") as err:  # the pivoting's fallback too
        F._quadprog_projector("upgrad")
    assert "\n" not in str(err.value) and "mtbench[zoo]" in str(err.value)
    assert bridge.NEEDS["CAGradWeighting"] == ("cvxpy", "clarabel")
    build("nash_mtl")  # mtbench's own solver: needs none


def test_every_new_combiner_runs_from_the_command_line(tmp_path):
    """`mtbench -m combiner=<the nine>` on a tiny shapes40, and two at level=params."""
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["-m", f"combiner={','.join(NEW)}", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in NEW:
        m = json.loads((run_dir(tmp_path / "results" / "shapes40", name) / "metrics.json").read_text())
        assert m["status"] == "completed", (name, m.get("reason"))
        assert math.isfinite(m["test"]["error_rate"])
    for name in ("upgrad", "gradvac"):
        cwd = tmp_path / f"params-{name}"
        cwd.mkdir()
        proc = run_cli("mtbench", [f"combiner={name}", "combiner.level=params", *args], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-4000:]
        m = json.loads((run_dir(cwd / "results" / "shapes40", name) / "metrics.json").read_text())
        assert m["status"] == "completed" and m["config"]["combiner"]["level"] == "params"


def plain_model_of(task: str) -> str:
    """The model a task's own config picks, composed without the preset."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            return str(compose(config_name="config", overrides=[f"task={task}"]).model.name)
    finally:
        GlobalHydra.instance().clear()


def test_loss_level_combiners_come_after_the_papers_nine():
    names = list(COMBINERS)
    assert names[: len(PAPER)] == list(PAPER)
    for name in LOSS_LEVEL:
        assert names.index(name) >= len(PAPER)


def test_zoo_preset_sweeps_every_combiner_and_composes_with_another_task():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            plain = compose(config_name="config", return_hydra_config=True)
            zoo = compose(config_name="config", overrides=["experiment=zoo"], return_hydra_config=True)
            celeba = compose(
                config_name="config", overrides=["experiment=zoo", "task=celeba"], return_hydra_config=True
            )
    finally:
        GlobalHydra.instance().clear()
    assert str(plain.hydra.sweeper.params.combiner).split(",") == list(PAPER)
    for cfg, task in ((zoo, "shapes40"), (celeba, "celeba")):
        assert str(cfg.hydra.sweeper.params.combiner).split(",") == list(COMBINERS)
        assert set(LOSS_LEVEL) <= set(COMBINERS)
        assert str(cfg.hydra.sweeper.params.seed) == "0,1,2"
        assert cfg.task.name == task and cfg.name == f"{task}_zoo"
    assert celeba.model.name == plain_model_of("celeba")

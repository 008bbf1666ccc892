"""``_target_`` for models, optimizers and schedulers: a dotted path builds the user's own,
the built-in names keep working, and a path that does not import is a one-line error."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from conftest import TINY, cli_case, run_cli
from hydra import compose, initialize_config_module

from mtbench.cli import validate
from mtbench.errors import MtbenchError
from mtbench.models import build_model
from mtbench.train import train
from mtbench.train.optim import build_optimizer, build_scheduler

MODULE = """
import torch
from torch import nn

CALLS = []


def build(in_channels, width, rep_dim, scale=1.0):
    CALLS.append({"in_channels": in_channels, "width": width, "rep_dim": rep_dim, "scale": scale})
    trunk = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, rep_dim))
    return trunk, rep_dim


def not_a_pair(in_channels, **options):
    return nn.Identity()


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_trunks.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_trunks", None)
    return importlib.import_module("my_trunks")


def config(*overrides: str):
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def test_model_target_builds_the_users_trunk_with_the_models_options(user_module):
    cfg = config("+model._target_=my_trunks.build", "+model.scale=2.0")
    validate(cfg)
    model = build_model(cfg.model, num_tasks=5, in_channels=3)
    assert user_module.CALLS == [{"in_channels": 3, "width": 8, "rep_dim": 32, "scale": 2.0}]
    assert isinstance(model.trunk, torch.nn.Sequential) and model.rep_dim == 32
    rep, out = model(torch.randn(2, 3, 16, 16))
    assert rep.shape == (2, 32) and out.shape == (2, 5)


def test_dotted_optimizer_and_scheduler_are_torch_classes_with_their_options():
    cfg = config(
        "trainer.optimizer=torch.optim.RMSprop",
        "+trainer.optimizer_options.alpha=0.9",
        "trainer.scheduler=torch.optim.lr_scheduler.ExponentialLR",
        "+trainer.scheduler_options.gamma=0.5",
    )
    validate(cfg)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(params, cfg.trainer)
    assert type(opt) is torch.optim.RMSprop
    assert opt.param_groups[0]["lr"] == cfg.trainer.lr and opt.param_groups[0]["alpha"] == 0.9
    sched = build_scheduler(opt, cfg.trainer)
    assert type(sched) is torch.optim.lr_scheduler.ExponentialLR
    opt.step()
    sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], cfg.trainer.lr * 0.5)


@pytest.mark.parametrize(
    "optimizer,kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("SGD", torch.optim.SGD)]
)
@pytest.mark.parametrize(
    "scheduler,skind",
    [
        ("none", type(None)),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR),
        ("step", torch.optim.lr_scheduler.StepLR),
    ],
)
def test_the_built_in_names_keep_working(optimizer, kind, scheduler, skind):
    cfg = config(f"trainer.optimizer={optimizer}", f"trainer.scheduler={scheduler}")
    validate(cfg)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg.trainer)
    assert type(opt) is kind and type(build_scheduler(opt, cfg.trainer)) is skind


def test_a_run_trains_with_the_users_trunk_optimizer_and_scheduler(user_module):
    cfg = config(
        "+model._target_=my_trunks.build",
        "trainer.optimizer=torch.optim.RMSprop",
        "trainer.scheduler=torch.optim.lr_scheduler.ExponentialLR",
        "+trainer.scheduler_options.gamma=0.5",
    )
    result = train(cfg)
    assert [row["lr"] for row in result["history"]] == [cfg.trainer.lr * 0.5, cfg.trainer.lr * 0.25]
    assert 0 <= result["test"]["error_rate"] <= 100 and len(user_module.CALLS) == 1


@pytest.mark.parametrize(
    "override,match",
    [
        ("+model._target_=no_such_module.build", r"model._target_='no_such_module.build' cannot be imported"),
        (
            "+model._target_=my_trunks.no_such_function",
            r"model._target_='my_trunks.no_such_function' cannot be imported",
        ),
        ("+model._target_=my_trunks.NOT_CALLABLE", r"is not callable"),
        ("trainer.optimizer=no_such_module.Opt", r"trainer.optimizer='no_such_module.Opt' cannot be imported"),
        ("trainer.optimizer=torch.nn.Linear", r"is not a torch.optim.Optimizer subclass"),
        (
            "trainer.scheduler=torch.optim.lr_scheduler.NoSuch",
            r"trainer.scheduler='torch.optim.lr_scheduler.NoSuch' cannot be imported",
        ),
        ("trainer.scheduler=torch.optim.Adam", r"is not a torch.optim.lr_scheduler.LRScheduler subclass"),
    ],
)
def test_a_target_that_does_not_import_is_refused_before_the_run(user_module, override, match):
    with pytest.raises(MtbenchError, match=match) as e:
        validate(config(override))
    assert "\n" not in str(e.value)


def test_a_trunk_that_returns_no_pair_is_a_one_line_error(user_module):
    cfg = config("+model._target_=my_trunks.not_a_pair")
    with pytest.raises(MtbenchError, match=r"must return \(trunk, rep_dim\)"):
        build_model(cfg.model, num_tasks=2)


cli_case(__name__, "optimizer=no_such_module.Opt", "mtbench", [*TINY, "trainer.optimizer=no_such_module.Opt"])


def test_the_command_refuses_a_bad_target_in_one_line(cli_runs):
    proc = cli_runs[__name__, "optimizer=no_such_module.Opt"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mtbench: error:")]
    assert "trainer.optimizer='no_such_module.Opt' cannot be imported" in line


def test_the_command_line_alone_names_a_trunk_and_a_scheduler_with_options(tmp_path, user_module):
    """``+model._target_`` and ``+trainer.scheduler_options.<k>`` pass the override checks (the
    builder and the class check their own options); the working folder (which holds
    ``my_trunks.py``) is importable."""
    args = [*TINY, "+model._target_=my_trunks.build", "+model.scale=2.0", "trainer.scheduler=torch.optim.lr_scheduler.ExponentialLR",
            "+trainer.scheduler_options.gamma=0.5"]  # fmt: skip
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = (tmp_path / "results" / "shapes40" / "runs" / "baseline").glob("*/seed=0/metrics.json")
    cfg = json.loads(found.read_text())["config"]
    assert cfg["model"]["_target_"] == "my_trunks.build" and cfg["trainer"]["scheduler_options"] == {"gamma": 0.5}
    bad = run_cli("mtbench", [*TINY, "+trainer.schedular_options.gamma=0.5"], cwd=tmp_path)
    assert bad.returncode == 2 and "no part of mtbench reads" in bad.stderr

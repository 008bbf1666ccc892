"""What the loss-level combiners (mtbench/combiners/lossweighted.py subclasses) share: a run from the
command line each, one-line errors for bad options there, float32 weights under bf16 losses."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY, cli_case, run_cli, run_dir
from loss_steps import LOSS_LEVEL, scalar_step

from mtbench.combiners import COMBINERS


@pytest.fixture(scope="module")
def zoo_sweep(tmp_path_factory):
    """`mtbench -m combiner=<the loss-level ones>` on the tiny shapes40 config, 3 epochs (DWA's
    weights move from the third)."""
    cwd = tmp_path_factory.mktemp("zoo_loss")
    args = [
        "-m",
        f"combiner={','.join(LOSS_LEVEL)}",
        *[o for o in TINY if not o.startswith("trainer.epochs")],
        "trainer.epochs=3",
    ]
    proc = run_cli("mtbench", args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "results" / "shapes40", proc


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_each_runs_end_to_end_from_the_cli(zoo_sweep, name):
    folder, proc = zoo_sweep
    run = run_dir(folder, name)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["combiner"] == name and m["epochs"] == 3
    assert 0 <= m["test"]["error_rate"] <= 100
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    lo, hi = history["combiner_w_min"], history["combiner_w_max"]
    assert ((lo > 0) & (lo <= hi)).all()
    if name == "dwa":  # weights 1 in the first two epochs, then the loss ratios' softmax
        assert list(lo[:2]) == [1.0, 1.0] and list(hi[:2]) == [1.0, 1.0]
        assert lo[2] < 1.0 < hi[2]
    if name in ("uw", "rlw", "gls", "famo"):
        assert lo.iloc[-1] < hi.iloc[-1]
    assert f"| {name} |" in proc.stdout  # a row of the sweep's table


BAD_OPTIONS = [
    (
        "combiner=dwa combiner.temperature=0",
        "combiner.temperature must be a positive number for combiner=dwa (got 0)",
    ),
    (
        "combiner=rlw combiner.distribution=gaussian",
        (
            "combiner.distribution='gaussian' is not allowed for combiner=rlw; choose one of: "
            "normal, uniform, dirichlet, bernoulli, constrained_bernoulli"
        ),
    ),
]
for _override, _ in BAD_OPTIONS:
    cli_case(__name__, _override, "mtbench", [*_override.split(), *TINY])


@pytest.mark.parametrize("override, message", BAD_OPTIONS)
def test_bad_options_from_the_cli_are_one_line(cli_runs, override, message):
    proc = cli_runs[__name__, override]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert len(errors) == 1, proc.stderr[-3000:]


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_bf16_losses_make_float32_weights_and_state(name):
    """Losses computed under bf16 autocast: the weights and the learned state stay float32."""
    comb = COMBINERS[name](3)
    p = torch.ones(3, requires_grad=True)
    for _ in range(3):
        losses = (p * torch.tensor([0.5, 1.0, 2.0])).to(torch.bfloat16)
        comb.backward(scalar_step(p, losses))
        comb.end_epoch()
    assert comb.last_weights.dtype == torch.float32 and torch.isfinite(p.grad).all()
    tensors = [v for v in comb.state_dict().values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in tensors)

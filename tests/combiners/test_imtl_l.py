"""imtl_l: IMTL-L's learned loss scales on hand-computed two-task steps, against torchjd's IMTLL
scalarizer trained by an Adam of the same learning rate, at rest, resumed, and from the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli, run_dir
from torchjd.scalarization import IMTLL

from mtbench.combiners import COMBINERS, Step
from mtbench.errors import MtbenchError


def scalar_step(losses: torch.Tensor) -> Step:
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses)  # type: ignore[arg-type]


def grad_of(comb, values) -> torch.Tensor:
    """th.grad after ``comb.backward`` on L = (th_0^2, 3 th_1) at th = values."""
    th = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    comb.backward(scalar_step(torch.stack([th[0] ** 2, 3 * th[1]])))
    return th.grad


def test_first_steps_by_hand():
    lr = 0.1
    comb = COMBINERS["imtl_l"](2, weight_lr=lr)
    # step 1: s = 0, w = e^0 = 1: the baseline's gradient (2 th_0, 3) = (2, 3) at th = (1, 2)
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 3.0], rel=1e-14)
    # d/ds (e^s L - s) at s = 0, L = (1, 6): (0, 5); Adam's first step is -lr g / (|g| + 1e-8)
    s = [0.0, -lr * 5 / (5 + 1e-8)]
    torch.testing.assert_close(
        comb.loss_scales.scales.detach(), torch.tensor(s, dtype=torch.float64), rtol=1e-14, atol=0
    )
    # step 2 at th = (1, 2): w = e^s
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 3 * math.exp(s[1])], rel=1e-14)
    assert comb.log_values() == pytest.approx({"w_min": math.exp(s[1]), "w_max": 1.0}, rel=1e-14)


def test_the_scales_come_to_rest_where_every_scaled_loss_is_one():
    comb = COMBINERS["imtl_l"](2, weight_lr=0.02)
    losses = torch.tensor([1.0, 6.0], dtype=torch.float64)
    for _ in range(1500):
        comb.task_weights(scalar_step(losses))
    w = torch.exp(comb.loss_scales.scales.detach())
    assert w.tolist() == pytest.approx([1.0, 1 / 6], rel=0.02)


@pytest.mark.parametrize(
    "losses",
    [
        [[0.5, 2.0], [0.4, 2.5], [0.45, 1.0], [0.3, 3.0], [0.2, 0.1]],
        [[1e-6, 1e3], [2e-6, 5e2], [1e-6, 1e3], [1e-7, 2e3]],  # scales 1e9 apart
        [[0.7], [0.6], [0.65]],  # one task
    ],
    ids=["two_tasks", "spread", "one_task"],
)
def test_equals_torchjds_imtll_trained_by_the_same_adam(losses):
    """torchjd's IMTLL(T) and its scales in an Adam of lr 0.05 (the network's optimizer there):
    the gradient of its scalarization in the losses is our weights, step after step, and its
    scales are ours."""
    t = len(losses[0])
    ours = COMBINERS["imtl_l"](t, weight_lr=0.05)
    ref = IMTLL(t).double()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    for row in losses:
        L = torch.tensor(row, dtype=torch.float64, requires_grad=True)
        opt.zero_grad()
        ref(L).backward()
        w = ours.task_weights(scalar_step(L))
        torch.testing.assert_close(w, L.grad, rtol=1e-13, atol=0)
        opt.step()
        torch.testing.assert_close(ours.loss_scales.scales.detach(), ref.log_scale.detach(), rtol=1e-13, atol=1e-15)


def test_state_resumes_exactly_and_is_restored_at_the_first_step():
    seq = [[0.5, 2.0], [0.4, 2.5], [0.45, 1.0], [0.3, 3.0]]
    full = COMBINERS["imtl_l"](2)
    first = COMBINERS["imtl_l"](2)
    for row in seq[:2]:
        full.task_weights(scalar_step(torch.tensor(row, dtype=torch.float64)))
        first.task_weights(scalar_step(torch.tensor(row, dtype=torch.float64)))
    state = first.state_dict()
    assert set(state) == {"scales", "optimizer"}
    resumed = COMBINERS["imtl_l"](2)
    resumed.load_state_dict(state)  # before the first step: applied there
    for row in seq[2:]:
        a = full.task_weights(scalar_step(torch.tensor(row, dtype=torch.float64)))
        b = resumed.task_weights(scalar_step(torch.tensor(row, dtype=torch.float64)))
        assert torch.equal(a, b)
    assert torch.equal(full.loss_scales.scales, resumed.loss_scales.scales)
    assert COMBINERS["imtl_l"](2).state_dict() == {}


def test_bf16_losses_give_float32_weights_and_scales():
    comb = COMBINERS["imtl_l"](2)
    for _ in range(2):
        w = comb.task_weights(scalar_step(torch.tensor([0.5, 2.0], dtype=torch.bfloat16)))
    assert w.dtype == torch.float32 and comb.state_dict()["scales"].dtype == torch.float32


@pytest.mark.parametrize("bad", [0, -1, "fast"])
def test_bad_learning_rate_is_one_line(bad):
    with pytest.raises(MtbenchError, match=r"^combiner.weight_lr must be a positive number for combiner=imtl_l "):
        COMBINERS["imtl_l"](2, weight_lr=bad)


@pytest.mark.slow
def test_runs_from_the_cli_and_a_bad_option_is_one_line(tmp_path):
    args = [*TINY, "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["combiner=imtl_l", "combiner.weight_lr=0.05", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir(tmp_path / "results" / "shapes40", "imtl_l")
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["config"]["combiner"]["weight_lr"] == 0.05
    assert math.isfinite(m["test"]["error_rate"])
    history = pd.read_csv(run / "history.csv")
    assert (history["combiner_w_min"] < history["combiner_w_max"]).all()  # the scales moved apart
    bad = run_cli("mtbench", ["combiner=imtl_l", "combiner.weight_lr=0", *args], cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    line = "combiner.weight_lr must be a positive number for combiner=imtl_l (got 0)"
    assert len([x for x in bad.stderr.splitlines() if line in x]) == 1, bad.stderr[-2000:]

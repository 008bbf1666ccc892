"""si: the sum of the log losses, on hand-computed two-task cases, against the autograd gradient
of sum_i log L_i (the Nash-MTL code's objective) and torchjd's GeometricMean, and from the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli, run_dir
from torchjd.scalarization import GeometricMean

from mtbench.combiners import COMBINERS, Step
from mtbench.errors import MtbenchError


def scalar_step(losses: torch.Tensor) -> Step:
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses)  # type: ignore[arg-type]


def grad_of(comb, values) -> torch.Tensor:
    """th.grad after ``comb.backward`` on L = (th_0^2, 3 th_1) at th = values."""
    th = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    comb.backward(scalar_step(torch.stack([th[0] ** 2, 3 * th[1]])))
    return th.grad


def test_two_tasks_by_hand():
    # th = (1, 2): L = (1, 6); w = (1, 1/6); dL_0/dth_0 = 2 th_0 = 2, dL_1/dth_1 = 3
    comb = COMBINERS["si"](2)
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 0.5], rel=1e-14)
    assert comb.log_values() == pytest.approx({"w_min": 1 / 6, "w_max": 1.0}, rel=1e-14)
    # the gradient of log th_0^2 + log 3 th_1 = (2 / th_0, 1 / th_1) at th = (0.5, 4)
    assert grad_of(comb, [0.5, 4.0]).tolist() == pytest.approx([4.0, 0.25], rel=1e-14)
    # every loss 1: the baseline's gradient
    assert grad_of(comb, [1.0, 1 / 3]).tolist() == pytest.approx([2.0, 3.0], rel=1e-14)


def test_scaling_a_loss_leaves_the_gradient_unchanged():
    th = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    grads = []
    for c in (1.0, 1e-6, 1e6):
        th.grad = None
        COMBINERS["si"](2).backward(scalar_step(torch.stack([c * th[0] ** 2, 3 * th[1]])))
        grads.append(th.grad.clone())
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=0)


LOSSES = {
    "random": torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.05,
    "spread": torch.tensor([1e-8, 1.0, 1e6], dtype=torch.float64),
    "one_task": torch.tensor([0.3], dtype=torch.float64),
    "equal": torch.full((4,), 2.5, dtype=torch.float64),
}


@pytest.mark.parametrize("case", list(LOSSES))
def test_weights_are_the_gradient_of_the_sum_of_logs_and_t_over_g_times_torchjds_geometric_mean(case):
    losses = LOSSES[case].clone().requires_grad_(True)
    # the Nash-MTL code's objective, sum(log(losses)), differentiated by autograd
    (ref,) = torch.autograd.grad(torch.log(losses).sum(), losses)
    w = COMBINERS["si"](len(losses)).task_weights(scalar_step(losses))
    torch.testing.assert_close(w, ref, rtol=1e-14, atol=0)
    # torchjd's GeometricMean G: dG/dL_i = G / (T L_i), so 1 / L_i = (T / G) dG/dL_i
    g = GeometricMean()(losses)
    (dg,) = torch.autograd.grad(g, losses)
    torch.testing.assert_close(w, len(losses) / g.detach() * dg, rtol=1e-12, atol=0)


def test_zero_and_negative_losses_are_clamped_and_finite():
    w = COMBINERS["si"](3).task_weights(scalar_step(torch.tensor([0.0, -1.0, 2.0], dtype=torch.float64)))
    assert w.tolist() == [1e12, 1e12, 0.5]


def test_bf16_losses_give_float32_weights_and_no_state():
    comb = COMBINERS["si"](2)
    w = comb.task_weights(scalar_step(torch.tensor([0.5, 2.0], dtype=torch.bfloat16)))
    assert w.dtype == torch.float32 and w.tolist() == [2.0, 0.5]
    assert comb.state_dict() == {}


def test_an_option_is_a_one_line_error():
    with pytest.raises(MtbenchError, match=r"^combiner.mu is not an option of combiner=si; its options are: none$"):
        COMBINERS["si"](2, mu=1.0)


@pytest.mark.slow
def test_runs_from_the_cli(tmp_path):
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=2", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["combiner=si", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir(tmp_path / "results" / "shapes40", "si")
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["combiner"] == "si" and math.isfinite(m["test"]["error_rate"])
    history = pd.read_csv(run / "history.csv")
    # the weights are 1 / L_i of the epoch's last step: above 1 for the binary losses below 1
    assert (history["combiner_w_min"] > 1.0).all() and (history["combiner_w_min"] < history["combiner_w_max"]).all()

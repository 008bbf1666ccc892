"""stch: the smooth Tchebycheff scalarisation after its warm-up, on hand-computed two-task steps,
against torchjd's STCH scalarizer and the authors' formula on the same losses (adversarial ones
included), resumed mid-epoch, and from the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, run_cli, run_dir
from torchjd.scalarization import STCH as JdSTCH

from mtbench.combiners import COMBINERS, Step
from mtbench.combiners.stch import stch_weights
from mtbench.errors import MtbenchError


def scalar_step(losses: torch.Tensor) -> Step:
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses)  # type: ignore[arg-type]


def grad_of(comb, values) -> torch.Tensor:
    """th.grad after ``comb.backward`` on L = (th_0^2, 3 th_1) at th = values."""
    th = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    comb.backward(scalar_step(torch.stack([th[0] ** 2, 3 * th[1]])))
    return th.grad


def test_warm_up_nadir_and_stch_steps_by_hand():
    comb = COMBINERS["stch"](2, mu=1.0, warmup_epochs=2)
    # epoch 0 (warm-up): sum_i log L_i, w = 1 / L; at th = (1, 2): L = (1, 6), grad = (2, 3 / 6)
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 0.5], rel=1e-14)
    comb.end_epoch()
    assert comb.nadir is None and comb.loss_sum is None  # epoch 0 is not the nadir's
    # epoch 1 (the last warm-up epoch): the same weights; its losses L = (1, 6) and (3, 0) average
    # to the nadir n = (2, 3)
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 0.5], rel=1e-14)
    assert grad_of(comb, [math.sqrt(3), 0.0]).tolist() == pytest.approx([2 / math.sqrt(3), 3e12], rel=1e-12)
    comb.end_epoch()
    torch.testing.assert_close(comb.nadir, torch.tensor([2.0, 3.0], dtype=torch.float64), rtol=1e-15, atol=0)
    # epoch 2 (STCH, mu = 1): p = softmax(log(L / n)) = (L_i / n_i) / sum_j L_j / n_j; at L = (1, 6):
    # L / n = (0.5, 2), p = (0.2, 0.8), w = 2 p / L = (0.4, 0.8 / 3): grad = (2 * 0.4, 3 * 0.8 / 3)
    assert grad_of(comb, [1.0, 2.0]).tolist() == pytest.approx([0.8, 0.8], rel=1e-14)
    assert comb.log_values() == pytest.approx({"w_min": 0.8 / 3, "w_max": 0.4}, rel=1e-14)
    # mu = 0.5 at the same point: p proportional to (L / n)^2 = (0.25, 4): p = (1, 16) / 17
    half = COMBINERS["stch"](2, mu=0.5, warmup_epochs=1)
    half.nadir = torch.tensor([2.0, 3.0], dtype=torch.float64)
    assert grad_of(half, [1.0, 2.0]).tolist() == pytest.approx([2 * 2 / 17, 3 * 2 * 16 / 17 / 6], rel=1e-14)


CASES = {
    "random": (torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.05, 1.0),
    "small_mu": (torch.tensor([0.3, 0.31, 2.0, 0.05], dtype=torch.float64), 0.01),
    "large_mu": (torch.tensor([0.3, 0.31, 2.0, 0.05], dtype=torch.float64), 100.0),
    "spread": (torch.tensor([1e-8, 1.0, 1e6], dtype=torch.float64), 0.1),
    "equal": (torch.full((4,), 2.5, dtype=torch.float64), 1.0),
    "one_task": (torch.tensor([0.3], dtype=torch.float64), 1.0),
}


def libmtl_objective(losses: torch.Tensor, nadir: torch.Tensor, mu: float) -> torch.Tensor:
    """The authors' multitask objective (their LibMTL STCH), written out: the max term detached."""
    x = torch.log(losses / nadir)
    reg = x - x.detach().max()
    return mu * torch.log(torch.exp(reg / mu).sum()) * len(losses)


@pytest.mark.parametrize("case", list(CASES))
def test_equals_torchjds_stch_and_the_authors_formula(case):
    losses, mu = CASES[case]
    nadir = torch.linspace(0.5, 3.0, len(losses), dtype=torch.float64)
    L = losses.clone().requires_grad_(True)
    comb = COMBINERS["stch"](len(losses), mu=mu, warmup_epochs=1)
    comb.nadir = nadir.clone()
    w = comb.task_weights(scalar_step(L))
    # torchjd: STCH of the log losses, preference weights 1, reference log n; times T
    jd = JdSTCH(mu, weights=torch.ones_like(L), reference=nadir.log())
    (ref,) = torch.autograd.grad(jd(L.log()) * len(losses), L)
    torch.testing.assert_close(w, ref, rtol=1e-12, atol=0)
    (ref2,) = torch.autograd.grad(libmtl_objective(L, nadir, mu), L)
    torch.testing.assert_close(w, ref2, rtol=1e-12, atol=0)
    assert float((w * losses).sum()) == pytest.approx(len(losses), rel=1e-12)  # the softmax sums to 1


def test_small_mu_puts_the_step_on_the_task_furthest_above_its_nadir():
    w = stch_weights(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 0.5, 2.0]), mu=1e-3)
    assert w.tolist() == pytest.approx([0.0, 3.0, 0.0], abs=1e-12)
    zero = stch_weights(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]), mu=1.0)  # clamped: finite
    assert torch.isfinite(zero).all()


def test_resumed_mid_nadir_epoch_gives_the_same_weights():
    seq = [[[1.0, 2.0], [0.9, 1.5]], [[0.8, 1.2], [0.7, 1.0], [0.6, 1.1]], [[0.5, 0.9], [0.55, 0.7]]]
    full = COMBINERS["stch"](2, warmup_epochs=2, mu=0.3)
    part = COMBINERS["stch"](2, warmup_epochs=2, mu=0.3)
    out_full, out_resumed = [], []
    for e, steps in enumerate(seq):
        for k, th in enumerate(steps):
            out_full.append(grad_of(full, th))
            if (e, k) < (1, 2):
                out_resumed.append(grad_of(part, th))
            elif (e, k) == (1, 2):  # stop before the nadir epoch's last step, resume in a fresh instance
                state = part.state_dict()
                assert state["epoch"] == 1 and state["loss_steps"] == 2 and state["nadir"] is None
                part = COMBINERS["stch"](2, warmup_epochs=2, mu=0.3)
                part.load_state_dict(state)
                out_resumed.append(grad_of(part, th))
            else:
                out_resumed.append(grad_of(part, th))
        full.end_epoch()
        part.end_epoch()
    assert full.nadir is not None and torch.equal(full.nadir, part.nadir)
    for a, b in zip(out_full, out_resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("mu", 0, "combiner.mu must be a positive number for combiner=stch (got 0)"),
        ("mu", "small", "combiner.mu must be a positive number for combiner=stch (got 'small')"),
        ("warmup_epochs", 0, "combiner.warmup_epochs must be an integer >= 1 (got 0)"),
        ("warmup_epochs", 1.5, "combiner.warmup_epochs must be an integer >= 1 (got 1.5)"),
    ],
)
def test_bad_options_are_one_line(option, value, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["stch"](2, **{option: value})
    assert str(err.value) == message


def test_bf16_losses_give_float32_weights_and_nadir():
    comb = COMBINERS["stch"](2, warmup_epochs=1)
    for _ in range(2):
        comb.task_weights(scalar_step(torch.tensor([0.5, 2.0], dtype=torch.bfloat16)))
        comb.end_epoch()
    w = comb.task_weights(scalar_step(torch.tensor([0.5, 2.0], dtype=torch.bfloat16)))
    assert w.dtype == torch.float32 and comb.nadir.dtype == torch.float32


@pytest.mark.slow
def test_runs_from_the_cli_warm_up_then_stch(tmp_path):
    args = [*TINY, "~hydra.callbacks.tables", "combiner=stch", "combiner.warmup_epochs=1", "combiner.mu=0.5"]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir(tmp_path / "results" / "shapes40", "stch")
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["epochs"] == 2 and math.isfinite(m["test"]["error_rate"])
    assert m["config"]["combiner"] == {"name": "stch", "mu": 0.5, "warmup_epochs": 1}

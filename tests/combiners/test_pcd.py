"""PCD against torchjd's stateful ``PCDWeighting`` over several steps on the same matrices
(adversarial ones included), with the documented factor T and the primary task moved first; its
state across a checkpoint, its ``primary`` task name, its option errors and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchjd.aggregation as jd
from conftest import TINY, one_error_line, run_cli, run_dir
from gram_matrices import ADVERSARIAL
from omegaconf import OmegaConf

from mtbench.combiners import COMBINERS, build_combiner
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError

MATS = ADVERSARIAL


def jitter(J: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th step's matrix: J moved a little (the same moves for both implementations)."""
    gen = torch.Generator().manual_seed(100 + k)
    return J * (1.0 + 0.2 * torch.rand(J.shape[0], 1, generator=gen, dtype=torch.float64)) + 0.05 * torch.randn(
        J.shape, generator=gen, dtype=torch.float64
    ) * (J.norm(dim=1, keepdim=True) / math.sqrt(J.shape[1]))


@pytest.mark.parametrize("matrix", list(MATS))
@pytest.mark.parametrize("primary", [0, "last"])
@pytest.mark.parametrize("solver", ["pivoting", "torchjd"])
def test_equals_torchjd_times_T_over_steps(matrix, primary, solver):
    J = MATS[matrix]
    T = J.shape[0]
    p = T - 1 if primary == "last" else 0
    order = [p] + [i for i in range(T) if i != p]
    ref = jd.PCDWeighting(tau=0.1, beta=0.9, eps=1e-8)
    ema, n = None, 0
    for k in range(4):
        Jk = J if k == 0 else jitter(J, k)
        G = Jk @ Jk.T
        ours, ema, n = F.pcd_weights_from_gram(G, p, ema, n, tau=0.1, beta=0.9, eps=1e-8, solver=solver)
        theirs = ref(G[order][:, order])
        expected = torch.empty(T, dtype=torch.float64)
        expected[order] = T * theirs
        scale = float(expected.abs().max()) + 1e-300
        assert float((ours - expected).abs().max()) <= 1e-12 * scale, (k, ours, expected)
        assert n == k + 1
    # and the combination of the rows (no history) is torchjd's aggregator's, times T
    agg = jd.PCD(tau=0.1, beta=0.9)(J[order])
    torch.testing.assert_close(
        F.pcd(J, primary=p, tau=0.1, beta=0.9, solver=solver), T * agg, rtol=1e-9, atol=1e-9 * float(J.norm())
    )


def test_every_secondary_task_gets_its_guaranteed_progress():
    """An independent check of the first step (EMA = ||g_i||^2, so the normalised gradients are
    unit vectors up to eps): the direction d ~ sum w_i g_i makes progress >= tau on every unit
    secondary gradient, in the primary gradient's norm times T, and is the primary gradient
    itself when it conflicts with no constraint."""
    J = MATS["random"]
    T, tau = J.shape[0], 0.3
    w, _, _ = F.pcd_weights_from_gram(J @ J.T, 0, tau=tau, beta=0.5, eps=0.0)
    d = w @ J
    assert math.isclose(float(d.norm()), T * float(J[0].norm()), rel_tol=1e-9)
    # the unscaled direction d~ (the QP's solution on unit vectors) has d~ . u_j >= tau for j >= 1
    unit = J / J.norm(dim=1, keepdim=True)
    c = torch.linalg.lstsq(unit.T, d.unsqueeze(1)).solution.squeeze(1)  # d in the unit basis
    c = c / c[0]  # the primary's coefficient is 1 in the QP's solution
    d_tilde = c @ unit
    assert float((unit[1:] @ d_tilde).min()) >= tau - 1e-9
    agreeing = MATS["agreeing"]
    w, _, _ = F.pcd_weights_from_gram(agreeing @ agreeing.T, 0)
    torch.testing.assert_close(w @ agreeing, 3 * agreeing[0])  # mtbench's scale: T equal g give T g


def test_the_pivoting_solves_many_tasks_as_torchjd_and_falls_back_where_it_certifies_nothing(monkeypatch):
    """40 tasks whose constraints bind in many ways (the CelebA-shaped case): the pivoting's
    certified multipliers give torchjd's weights; with dependent gradients (T > D) it certifies
    nothing and torchjd's active set takes over (the same weights by construction)."""
    import mtbench.combiners.pcd as pcd_module

    gen = torch.Generator().manual_seed(4)
    for tasks, dim, tau in ((40, 512, 0.02), (40, 512, 0.3), (40, 64, 0.1)):
        J = torch.randn(tasks, dim, generator=gen, dtype=torch.float64) + 0.2 * torch.randn(
            dim, generator=gen, dtype=torch.float64
        )
        G = J @ J.T
        ours = F.pcd_weights_from_gram(G, 5, tau=tau)[0]
        ref = F.pcd_weights_from_gram(G, 5, tau=tau, solver="torchjd")[0]
        close = float((ours @ J - ref @ J).norm()) <= 1e-9 * float((ref @ J).norm())
        assert close, (tasks, dim, tau)
    calls = []
    real = pcd_module._pcd_multipliers
    monkeypatch.setattr(pcd_module, "_pcd_multipliers", lambda *a: calls.append(real(*a)) or calls[-1])
    J = MATS["T_gt_D"]
    F.pcd_weights_from_gram(J @ J.T, 0, tau=0.5)
    assert calls == [None]  # dependent gradients: the fallback


def test_state_resumes_to_the_same_weights():
    gen = torch.Generator().manual_seed(1)
    grams = [(lambda J: J @ J.T)(torch.randn(3, 7, generator=gen, dtype=torch.float64)) for _ in range(4)]
    a = COMBINERS["pcd"](3, tau=0.2, beta=0.9)
    a.gram_weights(grams[0], None)
    saved = a.state_dict()
    ref = [a.gram_weights(g, None) for g in grams[1:]]
    b = COMBINERS["pcd"](3, tau=0.2, beta=0.9)
    b.load_state_dict(saved)
    got = [b.gram_weights(g, None) for g in grams[1:]]
    assert all(torch.equal(x, y) for x, y in zip(got, ref))
    assert saved["n_steps"] == 1 and saved["sq_norm_ema"].shape == (3,)


def test_primary_is_a_task_name():
    names = ["left", "middle", "right"]
    comb = build_combiner(OmegaConf.create({"name": "pcd", "primary": "right"}), 3, task_names=names)
    assert comb.primary_index == 2
    J = MATS["random"][:3]
    torch.testing.assert_close(comb.gram_weights(J @ J.T, None), F.pcd_weights_from_gram(J @ J.T, 2)[0])
    with pytest.raises(MtbenchError) as err:
        build_combiner(OmegaConf.create({"name": "pcd", "primary": "nose"}), 3, task_names=names)
    assert (
        str(err.value) == "combiner.primary='nose' is not a task of this run; the task names are: left, middle, right"
    )
    unbound = COMBINERS["pcd"](3, primary="right")  # no names given: refused at the first step, not guessed
    with pytest.raises(MtbenchError, match="task names were not given"):
        unbound.gram_weights(J @ J.T, None)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("tau", 1.5, "combiner.tau must be a finite number >= 0 and <= 1 (got 1.5)"),
        ("beta", 1.0, "combiner.beta must be a finite number >= 0 and < 1 (got 1.0)"),
        ("eps", -1, "combiner.eps must be a finite number >= 0 (got -1)"),
        ("primary", 3, "combiner.primary must be null or a non-empty string (got 3)"),
        ("solver", "qp", "combiner.solver='qp' is not allowed for combiner=pcd; choose one of: pivoting, torchjd"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(option, value, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["pcd"](3, **{option: value})
    assert str(err.value) == message


@pytest.mark.slow
def test_runs_from_the_command_line_with_a_primary_task_and_refuses_an_unknown_one(tmp_path):
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["combiner=pcd", "combiner.primary=smiling", *args], cwd=tmp_path)
    one = one_error_line(proc)
    assert "combiner.primary='smiling' is not a task of this run; the task names are: " in one
    assert not (tmp_path / "results").exists()
    from mtbench.data.shapes40 import ATTRIBUTES

    primary = ATTRIBUTES[3]
    proc = run_cli("mtbench", ["combiner=pcd", f"combiner.primary={primary}", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((run_dir(tmp_path / "results" / "shapes40", "pcd") / "metrics.json").read_text())
    assert m["status"] == "completed" and math.isfinite(m["test"]["error_rate"])
    assert m["config"]["combiner"]["primary"] == primary

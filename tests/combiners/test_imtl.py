"""imtl: IMTL-L's scales with IMTL-G's weights on the scaled gradients. The pure function against
torchjd's IMTLGWeighting of the scaled Gram matrix and against LibMTL's IMTL formula written out
(the same inputs, adversarial ones included); the combiner against an independent autograd
computation at both levels; its scales' updates by hand; resume; options; the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as TF
from conftest import TINY, run_cli
from gram_matrices import ADVERSARIAL
from torch import nn
from torchjd.aggregation import IMTLGWeighting

import mtbench.combiners.functional as F
from mtbench.combiners import COMBINERS, Step
from mtbench.errors import MtbenchError
from mtbench.models import LinearHeads, MultiTaskModel

MATS = ADVERSARIAL
SCALES = {
    "zero": lambda t: torch.zeros(t, dtype=torch.float64),
    "mixed": lambda t: torch.linspace(-2.0, 3.0, t, dtype=torch.float64),
    "spread": lambda t: torch.linspace(-10.0, 10.0, t, dtype=torch.float64),
}


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-6) -> None:
    scale = max(float(ref.norm()), float(ours.norm()), 1e-300)
    assert float((ours - ref).norm()) <= rtol * scale, (ours, ref)


#: a row 1e6 times smaller makes the Gram matrix's condition number 1e12: two Gram-based solves
#: (ours, torchjd's) both give equal projections but agree to 1e-5 only there
@pytest.mark.parametrize("scales", ["zero", "mixed"])
@pytest.mark.parametrize("matrix", [m for m in MATS if m != "one_1e6_smaller"])
def test_equals_t_times_torchjds_imtlg_of_the_scaled_gradients(matrix, scales):
    J = MATS[matrix]
    t = J.shape[0]
    s = SCALES[scales](t)
    H = J * s.exp()[:, None]  # the scaled losses' gradients
    ref = t * IMTLGWeighting()(H @ H.T) @ H
    close(F.imtl(J, s), ref)
    # the weights of the unscaled rows are alpha_i e^{s_i}
    close(F.imtl_weights_from_gram(J @ J.T, s) @ J, ref)


def equal_projection_spread(J: torch.Tensor, d: torch.Tensor) -> float:
    """How far d is from equal projections on the unit rows of J, relative to their mean."""
    p = (J / J.norm(dim=1, keepdim=True)) @ d
    return float((p - p.mean()).abs().max() / p.abs().mean())


@pytest.mark.parametrize("matrix", ["random", "one_1e4_larger"])
def test_scales_too_spread_for_a_pseudo_inverse_keep_the_equal_projections(matrix):
    """Scales e^-10 to e^10: the scaled Gram matrix's condition number is 1e17 or more, and
    torchjd's pinv of it truncates (its combination misses the equal projections); ours solves
    with the unscaled Gram matrix and keeps them (and equals LibMTL's formula below)."""
    J = MATS[matrix]
    s = SCALES["spread"](J.shape[0])
    H = J * s.exp()[:, None]
    assert float(torch.linalg.cond(H @ H.T)) > 1e17
    assert equal_projection_spread(J, F.imtl(J, s)) < 1e-9
    assert equal_projection_spread(J, IMTLGWeighting()(H @ H.T) @ H) > 0.1


def libmtl_imtl(H: torch.Tensor) -> torch.Tensor:
    """LibMTL's IMTL combination of the scaled gradients H [T, D], written out (T >= 2, full row
    rank): alpha_{2..T} = h_1 U^T (D U^T)^{-1}, D_i = h_1 - h_i, U_i = u_1 - u_i, alpha_1 = 1 - sum."""
    u = H / H.norm(dim=1, keepdim=True)
    D = H[:1] - H[1:]
    U = u[:1] - u[1:]
    rest = H[0] @ U.T @ torch.linalg.inv(D @ U.T)
    alpha = torch.cat([(1 - rest.sum()).unsqueeze(0), rest])
    return alpha @ H


@pytest.mark.parametrize("scales", list(SCALES))
@pytest.mark.parametrize("matrix", ["random", "one_1e4_larger"])
def test_equals_t_times_libmtls_formula_on_full_rank_gradients(matrix, scales):
    J = MATS[matrix]
    s = SCALES[scales](J.shape[0])
    close(F.imtl(J, s), J.shape[0] * libmtl_imtl(J * s.exp()[:, None]), rtol=1e-6)


def test_zero_scales_are_imtl_g_and_the_scales_change_the_length_not_the_direction():
    J = MATS["random"]
    close(F.imtl(J, torch.zeros(5)), F.imtl_g(J), rtol=1e-12)
    d = F.imtl(J, torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
    cos = float(d @ F.imtl_g(J) / (d.norm() * F.imtl_g(J).norm()))
    assert cos == pytest.approx(1.0, abs=1e-12)
    u = J / J.norm(dim=1, keepdim=True)  # equal projections on the unit gradients
    proj = u @ d
    torch.testing.assert_close(proj, proj[:1].expand(5), rtol=1e-10, atol=0)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0])])
def test_bad_log_scales_are_a_value_error(bad):
    with pytest.raises(ValueError, match="log_scales"):
        F.imtl(MATS["random"], bad)


# -- the combiner -------------------------------------------------------------------------------

T, B, D_IN, D_REP = 3, 6, 4, 5


def make_model(mlp: bool) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    model = MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP)
    if mlp:
        model.heads = nn.Sequential(nn.Linear(D_REP, 7), nn.Tanh(), nn.Linear(7, T))
    return model.double()


def make_step(model, seed: int, column_losses: bool) -> Step:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    y = (torch.rand(B, T, generator=g) < 0.5).double()
    rep, out = model(x)
    losses = TF.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0) * torch.tensor(
        [1.0, 5.0, 0.2], dtype=torch.float64
    )
    return Step(model, x, rep, out, losses, column_losses=column_losses)


def expected_grads(model, seed: int, s: torch.Tensor, level: str) -> list[torch.Tensor]:
    """Independently: h_i = e^{s_i} dL_i (at the representation or the trunk's parameters),
    alpha = T x torchjd's IMTLGWeighting of their Gram matrix, the trunk gets sum_i alpha_i h_i,
    head parameters the gradient of sum_i e^{s_i} L_i."""
    step = make_step(model, seed, column_losses=False)
    e = s.exp()
    trunk, heads = model.shared_parameters(), model.head_parameters()
    at = [step.rep] if level == "representation" else trunk
    rows = []
    for i in range(T):
        gi = torch.autograd.grad(e[i] * step.losses[i], at, retain_graph=True)
        rows.append(torch.cat([x.reshape(-1) for x in gi]))
    H = torch.stack(rows)
    alpha = T * IMTLGWeighting()(H @ H.T)
    combo = alpha @ H
    if level == "representation":
        trunk_grads = torch.autograd.grad(step.rep, trunk, combo.reshape(step.rep.shape), retain_graph=True)
    else:
        trunk_grads, k = [], 0
        for p in trunk:
            trunk_grads.append(combo[k : k + p.numel()].reshape(p.shape))
            k += p.numel()
    head_grads = torch.autograd.grad((e * step.losses).sum(), heads)
    return [*trunk_grads, *head_grads]


@pytest.mark.parametrize("column_losses", [True, False])
@pytest.mark.parametrize("mlp", [False, True])
@pytest.mark.parametrize("level", ["representation", "params"])
def test_combiner_steps_equal_the_independent_computation(level, mlp, column_losses):
    model = make_model(mlp)
    comb = COMBINERS["imtl"](T, level=level, weight_lr=0.3)
    for seed in (1, 2, 3):  # the scales move from the second step on
        s = torch.zeros(T, dtype=torch.float64) if comb.loss_scales.scales is None else comb.loss_scales.scales
        s = s.detach().clone()
        model.zero_grad(set_to_none=True)
        comb.backward(make_step(model, seed, column_losses))
        got = [p.grad for p in [*model.shared_parameters(), *model.head_parameters()]]
        want = expected_grads(model, seed, s, level)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.equal(comb.loss_scales.scales.detach(), torch.zeros(T, dtype=torch.float64))
    assert comb.last_weights.shape == (T,) and comb.last_weights.dtype == torch.float64


def test_the_first_step_is_imtl_gs_and_the_scales_take_imtl_ls_adam_step():
    model = make_model(False)
    lr = 0.1
    comb, ref = COMBINERS["imtl"](T, weight_lr=lr), COMBINERS["imtl_g"](T)
    step = make_step(model, 1, True)
    comb.backward(step)
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    ref.backward(make_step(model, 1, True))
    for a, b in zip(ours, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # d/ds (e^s L - s) at s = 0 is L - 1; Adam's first step: s = -lr (L - 1) / (|L - 1| + 1e-8)
    g = step.losses.detach() - 1
    torch.testing.assert_close(comb.loss_scales.scales.detach(), -lr * g / (g.abs() + 1e-8), rtol=1e-12, atol=0)


def test_state_resumes_to_the_same_gradients():
    model = make_model(False)
    full, first = COMBINERS["imtl"](T), COMBINERS["imtl"](T)
    for seed in (1, 2):
        full.backward(make_step(model, seed, True))
        first.backward(make_step(model, seed, True))
    resumed = COMBINERS["imtl"](T)
    resumed.load_state_dict(first.state_dict())
    for seed in (3, 4):
        grads = []
        for comb in (full, resumed):
            model.zero_grad(set_to_none=True)
            comb.backward(make_step(model, seed, True))
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("weight_lr", 0, "combiner.weight_lr must be a positive number for combiner=imtl (got 0)"),
        (
            "level",
            "trunk",
            "combiner.level='trunk' is not allowed for combiner=imtl; choose one of: representation, params",
        ),
    ],
)
def test_bad_options_are_one_line(option, value, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["imtl"](T, **{option: value})
    assert str(err.value) == message


@pytest.mark.slow
def test_runs_from_the_cli_at_both_levels(tmp_path):
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["-m", "combiner=imtl", "combiner.level=representation,params", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "results" / "shapes40" / "runs" / "imtl"
    runs = sorted(folder.glob("*/seed=0"))
    assert len(runs) == 2
    levels = set()
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "completed" and math.isfinite(m["test"]["error_rate"])
        levels.add(m["config"]["combiner"]["level"])
    assert levels == {"representation", "params"}

"""What the Gram-weighted methods (mtbench/combiners/gramweighted.py subclasses) share: equality with
torchjd's aggregators times the documented factor on random and adversarial matrices, the
baseline's scale, finite results, one task, warm starts kept in the state."""

from __future__ import annotations

import pytest
import torch
import torchjd.aggregation as jd
from gram_matrices import ALL, MATS, close
from torchjd.linalg import QuadprogProjector

from mtbench.combiners import COMBINERS
from mtbench.combiners import functional as F

# (our function, torchjd's aggregator, the documented factor ours / torchjd's)
STATELESS = {
    # torchjd with the ridge 1e-9 of ours (its default 1e-4 is a 1e-4 regularisation)
    "upgrad": (F.upgrad, lambda T: jd.UPGrad(projector=QuadprogProjector(reg_eps=1e-9)), lambda T: T),
    "dualproj": (F.dualproj, lambda T: jd.DualProj(projector=QuadprogProjector(reg_eps=1e-9)), lambda T: T),
    "imtl_g": (F.imtl_g, lambda T: jd.IMTLG(), lambda T: T),
    "aligned_mtl": (F.aligned_mtl, lambda T: jd.AlignedMTL(), lambda T: T),
    # (the bridge to torchjd's solver; mtbench's own: test_cagrad_is_optimal and below)
    "cagrad_cvxpy": (lambda J: F.cagrad(J, solver="cvxpy"), lambda T: jd.CAGrad(c=0.4), lambda T: T / 1.4),
    "config": (F.config, lambda T: jd.ConFIG(), lambda T: 1.0),
    # (the bridge to torchjd's solver; mtbench's own: test_fairgrad_newton_solves_the_equation)
    "fairgrad_raw": (
        lambda J: F.fairgrad(J, rescale=False, solver="scipy"),
        lambda T: jd.FairGrad(alpha=1.0),
        lambda T: 1.0,
    ),
}


#: FairGrad on a zero task or an exact conflict has no finite solution of G w = w^(-1/alpha):
#: test_fairgrad_without_a_solution
PAIRS = [(m, x) for m in STATELESS for x in MATS if not (m == "fairgrad_raw" and x in ("zero_task", "opposing"))]


@pytest.mark.parametrize("method, matrix", PAIRS)
def test_equals_torchjd_times_the_documented_factor(method, matrix):
    ours_fn, ref_agg, factor = STATELESS[method]
    J = MATS[matrix]
    T = J.shape[0]
    if method in ("upgrad", "dualproj") and matrix == "one_1e4_larger":
        # torchjd's QP on the raw Gram matrix: its ridge drowns the small tasks; the same
        # projections of the unit rows (same dual cone), preference scaled by the norms
        n = J.norm(dim=1)
        agg = (jd.UPGrad if method == "upgrad" else jd.DualProj)(
            pref_vector=n / T, projector=QuadprogProjector(reg_eps=1e-9)
        )
        close(ours_fn(J), agg(J / n[:, None]) * T)
        return
    close(ours_fn(J), ref_agg(T)(J) * factor(T), floor=float(J.sum(0).norm()))


@pytest.mark.parametrize(
    "name, state_fn, rtol", [("fairgrad", F.fairgrad_state, 1e-9), ("cagrad", F.cagrad_state, 1e-12)]
)
def test_warm_start_and_state(name, state_fn, rtol):
    """A solve from the last step's state gives the cold solve's weights; the combiner keeps that
    state in its state_dict (a resumed run takes the same iterations)."""
    J = MATS["random"]
    moved = J + 0.1 * torch.randn(J.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, state = state_fn(moved @ moved.T)
    cold, _ = state_fn(J @ J.T)
    warm, _ = state_fn(J @ J.T, start=state)
    torch.testing.assert_close(warm, cold, rtol=rtol, atol=0)
    comb = COMBINERS[name](5)
    comb.gram_weights(moved @ moved.T, None)
    saved = comb.state_dict()
    torch.testing.assert_close(saved["start"], state, rtol=0, atol=0)
    other = COMBINERS[name](5)
    other.load_state_dict(saved)
    torch.testing.assert_close(other.gram_weights(J @ J.T, None), comb.gram_weights(J @ J.T, None), rtol=0, atol=0)


@pytest.mark.parametrize("method", list(ALL))
def test_equal_agreeing_gradients_give_the_baselines_sum(method):
    """mtbench's scale: T equal gradients g give T g (the plain sum of the losses' gradients)."""
    for T in (2, 3, 7):
        g = torch.linspace(-1, 2, 9, dtype=torch.float64) * 3.0
        J = g.expand(T, -1).clone()
        close(ALL[method](J), T * g, rtol=1e-6)


@pytest.mark.parametrize("method", list(ALL))
def test_every_result_is_finite_on_the_adversarial_matrices_and_keeps_dtype(method):
    for name, J in MATS.items():
        out = ALL[method](J.float())
        assert out.dtype == torch.float32 and out.shape == J.shape[1:]
        assert bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("method", list(ALL))
def test_one_task_is_its_gradient_and_all_zero_gradients_give_zero(method):
    g = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    close(ALL[method](g), g[0], rtol=1e-6)
    out = ALL[method](torch.zeros(3, 6, dtype=torch.float64))
    assert torch.equal(out, torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
def test_warm_started_combiners_keep_their_start_in_the_state(name):
    """The warm start is combiner state: a combiner loaded from another's state_dict solves the
    next Gram matrix exactly as that one does."""
    J = MATS["random"]
    moved = J + 0.1 * torch.randn(J.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    losses = torch.ones(5)
    step = type("S", (), {"losses": losses, "rep": torch.zeros(1)})()
    comb = COMBINERS[name](5)
    assert comb.warm_start_state
    comb.gram_weights(moved @ moved.T, step)
    other = COMBINERS[name](5)
    other.load_state_dict(comb.state_dict())
    torch.testing.assert_close(other.gram_weights(J @ J.T, step), comb.gram_weights(J @ J.T, step), rtol=0, atol=0)

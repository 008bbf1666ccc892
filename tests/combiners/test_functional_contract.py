"""What every function of mtbench.combiners.functional promises alike: one autograd behaviour
(the weights detached, the combination differentiable in ``grads``), zeros for an empty stack,
and zero for a direction that is rounding noise (ConFIG on opposing rows of one rank)."""

from __future__ import annotations

import pytest
import torch

import mtbench.combiners.functional as F


def _gen():
    return torch.Generator().manual_seed(0)


#: every function of the namespace that combines a [T, D] stack into one gradient
METHODS = {
    "graddrop": lambda g: F.graddrop(g, generator=_gen()),
    "graddrop-renormalize": lambda g: F.graddrop(g, generator=_gen(), renormalize=True, leak=0.2),
    "random_graddrop": lambda g: F.random_graddrop(g, generator=_gen()),
    "pcgrad": lambda g: F.pcgrad(g, generator=_gen()),
    "mgda": lambda g: F.mgda_weights(g) @ g,
    "upgrad": F.upgrad,
    "dualproj": F.dualproj,
    "imtl_g": F.imtl_g,
    "aligned_mtl": F.aligned_mtl,
    "cagrad": F.cagrad,
    "fairgrad": F.fairgrad,
    "config": F.config,
    "gradvac": lambda g: F.gradvac(g, generator=_gen()),
    "nash_mtl": F.nash_mtl,
    "pcd": F.pcd,
    "excess_mtl": F.excess_mtl,
    "db_mtl": F.db_mtl,
    "cr_mogm": lambda g: F.cr_mogm(g, F.upgrad_weights_from_gram, torch.full((g.shape[0],), 0.5, dtype=g.dtype)),
    "imtl": lambda g: F.imtl(g, torch.linspace(-1.0, 1.0, g.shape[0])),
    # the two-batch methods with both batches' rows equal; MoCo's first step, losses of 1
    "sdmgrad": lambda g: F.sdmgrad(g, g),
    "modo": lambda g: F.modo(g, g),
    "moco": lambda g: F.moco(g, torch.ones(g.shape[0], dtype=g.dtype)),
}
#: the Gram-matrix methods: one weight per task, from the detached Gram matrix
GRAM = {"pcgrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "cagrad", "fairgrad", "config", "gradvac"}
GRAM |= {"nash_mtl", "sdmgrad", "modo", "moco"}
GRAM |= {"pcd", "cr_mogm", "excess_mtl", "db_mtl"}  # (one weight per task, as the Gram-matrix methods)
GRAM |= {"imtl"}


def test_every_combining_function_is_covered():
    # graddrop_factored takes the factors of the stack, not the stack (tests/combiners/test_fast_paths.py)
    others = {"gram_square_root", "graddrop_factored"}
    others |= {"cr_mogm_weights"}  # smooths a weight vector (tests/combiners/test_cr_mogm.py)
    names = {n for n in F.__all__ if not n.endswith(("_from_gram", "_state", "_transfer")) and n not in others}
    covered = {n.split("-")[0] for n in METHODS} | {"mgda_weights"}
    # the two-batch and MoCo weights and state (tests/combiners/test_twobatch.py)
    covered |= {"sdmgrad_weights", "modo_weights", "moco_update", "two_batch_matrix", "project_onto_simplex"}
    assert names <= covered, f"not checked here: {sorted(names - covered)}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_are_detached_and_the_combination_differentiable(name):
    """d(out . r)/d grads = K * r with K the combination's coefficients, and out = sum_i K_i g_i:
    true only when no coefficient depends on ``grads`` through autograd (a coefficient that did
    would add its own derivative, breaking the identity)."""
    torch.manual_seed(1)
    g0 = torch.randn(4, 6, dtype=torch.float64)
    g0[1] = -0.5 * g0[0] + 0.1 * g0[1]  # a conflict, so the solvers do something
    grads = g0.clone().requires_grad_(True)
    out = METHODS[name](grads)
    assert out.requires_grad and out.shape == (6,)
    r = torch.randn(6, dtype=torch.float64) + 3.0
    (grad,) = torch.autograd.grad(out @ r, grads)
    coeff = grad / r
    torch.testing.assert_close((coeff * g0).sum(0), out.detach(), rtol=1e-10, atol=1e-12)
    if name in GRAM:  # one weight per task, the same in every coordinate
        torch.testing.assert_close(coeff, coeff[:, :1].expand_as(coeff), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_empty_stack_gives_zeros(name):
    out = METHODS[name](torch.zeros(0, 3, dtype=torch.float64))
    assert out.shape == (3,) and out.dtype == torch.float64 and not out.any()


def test_empty_stack_as_torchjd():
    A = pytest.importorskip("torchjd.aggregation")
    empty = torch.zeros(0, 3, dtype=torch.float64)
    for ours, theirs in [
        (F.imtl_g, A.IMTLG()),
        (F.config, A.ConFIG()),
        (F.gradvac, A.GradVac()),
        (F.pcgrad, A.PCGrad()),
    ]:
        torch.testing.assert_close(ours(empty), theirs(empty))
    assert F.mgda_weights(empty).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_config_on_opposing_rows_of_one_rank_is_zero(dtype):
    """1 has no component in the unit gradients' range: pinv(U) 1 = 0, so no direction (a
    solve would return rounding noise normalised to full length, conflicting with two tasks)."""
    rows = torch.tensor([[1, 2, 2], [-2, -4, -4], [3, 6, 6], [-0.5, -1, -1]], dtype=dtype)
    out = F.config(rows)
    assert not out.any(), out
    if dtype == torch.float64:  # (torchjd's own float32 result is rounding noise at full length)
        A = pytest.importorskip("torchjd.aggregation")
        torch.testing.assert_close(out, A.ConFIG()(rows))


def test_config_of_one_rank_rows_that_agree_is_their_direction():
    rows = torch.tensor([[1, 2, 2], [2, 4, 4], [3, 6, 6]], dtype=torch.float64)
    out = F.config(rows)
    torch.testing.assert_close(out, rows.sum(0))
    A = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(out, A.ConFIG()(rows))

"""The certified solves of mtbench/combiners/linalg.py (a Cholesky solve where a pseudo-inverse
would keep every direction: IMTL-G, ConFIG)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from mtbench.combiners import functional as fn


@pytest.mark.parametrize("arrays", ["torch", "numpy"])
def test_well_conditioned_solve_certifies_only_what_pinv_would_invert(arrays):
    """Torch tensors, and NumPy arrays (a vector right-hand side; below 64 tasks one compiled
    call, :func:`loops.certified_solve`): the same certificate and solution."""
    from mtbench.combiners.linalg import MAX_CERTIFIED_CONDITION
    from mtbench.combiners.linalg import well_conditioned_solve as solve

    def well_conditioned_solve(g, rhs):
        if arrays == "torch" or rhs.dim() > 1:
            return solve(g, rhs)
        out = solve(g.numpy(), rhs.numpy())
        assert out is None or isinstance(out, np.ndarray)
        return None if out is None else torch.from_numpy(out)

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 100, generator=gen, dtype=torch.float64)
    g = a @ a.T
    b = torch.randn(40, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(well_conditioned_solve(g, b), torch.linalg.pinv(g) @ b, rtol=1e-10, atol=0)
    rhs = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(well_conditioned_solve(g, rhs), torch.linalg.solve(g, rhs), rtol=1e-10, atol=0)
    low = a[:, :30] @ a[:, :30].T  # rank 30 of 40
    assert well_conditioned_solve(low, b) is None
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    for cond, certified in ((1e3, True), (1e7, True), (1e10, False)):
        evals = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 40, dtype=torch.float64)
        m = q @ torch.diag(evals) @ q.T
        out = well_conditioned_solve(m, b)
        assert (out is not None) == certified, cond
        if out is not None:
            torch.testing.assert_close(out, torch.linalg.pinv(m) @ b, rtol=cond * 1e-13, atol=0)
    assert MAX_CERTIFIED_CONDITION == 1e8
    nan = g.clone()
    nan[0, 0] = float("nan")
    assert well_conditioned_solve(nan, b) is None
    big = torch.randn(80, 200, generator=gen, dtype=torch.float64)  # from 64 tasks on: torch's path
    b80 = torch.randn(80, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        well_conditioned_solve(big @ big.T, b80), torch.linalg.solve(big @ big.T, b80), rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("name", ["imtl_g", "config"])
def test_cholesky_path_equals_the_pseudo_inverse_path(name, monkeypatch):
    """IMTL-G's and ConFIG's weights with the certified solve equal those of the pseudo-inverse
    alone (the path of rank-deficient Gram matrices), on 40 tasks."""
    gen = torch.Generator().manual_seed(1)
    grads = 0.3 * torch.randn(64, generator=gen, dtype=torch.float64) + torch.randn(
        40, 64, generator=gen, dtype=torch.float64
    )
    gram = grads @ grads.T
    weights = getattr(fn, f"{name}_weights_from_gram")
    fast = weights(gram)
    monkeypatch.setattr(
        importlib.import_module(f"mtbench.combiners.{name}"), "well_conditioned_solve", lambda g, rhs: None
    )
    torch.testing.assert_close(fast, weights(gram), rtol=1e-8, atol=1e-12)

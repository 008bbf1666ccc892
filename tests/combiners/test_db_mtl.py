"""DB-MTL against an independent transcription of LibMTL's ``DB_MTL`` update (its buffer, its
normalisation to the largest norm) over several steps on the same float64 matrices, adversarial
ones included; the combiner against autograd's gradients of the log losses, its state across a
checkpoint and its option errors (the command line: test_excess_mtl.py runs both)."""

from __future__ import annotations

import pytest
import torch
from paramrows_cases import (
    MATS,
    T,
    assert_resumes_to_the_same_updates,
    autograd_rows,
    make_model,
    make_step,
    moved,
    shared_grad,
)

from mtbench.combiners import COMBINERS
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError


class LibMTLReference:
    """LibMTL's DB_MTL.backward on given log-loss gradients (reading of its source): a buffer
    starting at zero, buffer = grads + (beta / step**beta_sigma) * (buffer - grads), then
    sum_i (max norm / (norm_i + 1e-8)) * buffer_i."""

    def __init__(self, shape, beta, beta_sigma):
        self.buffer = torch.zeros(shape, dtype=torch.float64)
        self.step, self.beta, self.beta_sigma = 0, beta, beta_sigma

    def __call__(self, grads):
        self.step += 1
        self.buffer = grads + (self.beta / self.step**self.beta_sigma) * (self.buffer - grads)
        norms = self.buffer.norm(dim=-1)
        alpha = norms.max() / (norms + 1e-8)
        return sum(alpha[i] * self.buffer[i] for i in range(grads.shape[0]))


@pytest.mark.parametrize("matrix", list(MATS))
@pytest.mark.parametrize("beta, beta_sigma", [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0), (1.0, 0.0)])
def test_equals_libmtls_update_over_steps(matrix, beta, beta_sigma):
    J = MATS[matrix]
    ref = LibMTLReference(J.shape, beta, beta_sigma)
    buffer = None
    for k in range(5):
        Jk = moved(J, k)
        weights, buffer = F.db_mtl_state(Jk, buffer, k + 1, beta, beta_sigma)
        expected = ref(Jk)
        ours = weights @ buffer
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max() + 1e-300))
        torch.testing.assert_close(buffer, ref.buffer, rtol=1e-12, atol=0)


def test_every_buffered_gradient_is_scaled_to_the_largest_norm():
    J = MATS["one_1e4_larger"]
    weights, buffer = F.db_mtl_state(J, None, 1, 0.9, 0.0)
    scaled = (weights[:, None] * buffer).norm(dim=1)
    torch.testing.assert_close(scaled, torch.full_like(scaled, float(buffer.norm(dim=1).max())), rtol=1e-6, atol=0)
    torch.testing.assert_close(F.db_mtl(J, beta=0.9), weights @ buffer)
    agreeing = MATS["agreeing"]
    torch.testing.assert_close(F.db_mtl(agreeing, beta=0.0), 3 * agreeing[0])  # no buffer: the sum


def test_the_combiner_uses_the_gradients_of_the_log_losses():
    model = make_model()
    comb = COMBINERS["db_mtl"](T, beta=0.5, beta_sigma=0.5)
    ref = None
    for seed in (1, 2, 3):
        rows, heads, _ = autograd_rows(model, seed, lambda losses: torch.log(losses + 1e-8))
        ref = ref or LibMTLReference(rows.shape, 0.5, 0.5)
        expected = ref(rows)
        model.zero_grad(set_to_none=True)
        comb.backward(make_step(model, seed))
        torch.testing.assert_close(shared_grad(model), expected, rtol=1e-9, atol=1e-12)
        for p, h in zip(model.heads.parameters(), heads):  # each head: its log loss's gradient
            torch.testing.assert_close(p.grad, h, rtol=1e-10, atol=1e-12)


def test_state_resumes_to_the_same_updates():
    saved = assert_resumes_to_the_same_updates(lambda: COMBINERS["db_mtl"](T, beta_sigma=0.5))
    assert saved["steps"] == 1 and saved["buffer"].shape[0] == T


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("beta", 1.5, "combiner.beta must be a finite number >= 0 and <= 1 (got 1.5)"),
        ("beta_sigma", -0.1, "combiner.beta_sigma must be a finite number >= 0 (got -0.1)"),
        ("chunk_size", 0, "combiner.chunk_size must be null or an integer >= 1 (got 0)"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(option, value, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["db_mtl"](T, **{option: value})
    assert str(err.value) == message

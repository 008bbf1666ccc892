"""Random loss weighting (mtbench/combiners/rlw.py): each distribution's draws from the step's generator."""

from __future__ import annotations

import math

import pytest
import torch
from loss_steps import backward_of

from mtbench.combiners import COMBINERS, Step
from mtbench.errors import MtbenchError


def rlw_weights(distribution: str, t: int, draws: int, gen_seed: int = 0) -> torch.Tensor:
    """``draws`` successive weight vectors [draws, t] from one generator (equal losses)."""
    comb = COMBINERS["rlw"](t, distribution=distribution)
    g = torch.Generator().manual_seed(gen_seed)
    out = []
    for _ in range(draws):
        losses = torch.ones(t, dtype=torch.float64)
        out.append(comb.task_weights(Step(None, None, None, None, losses, g, g)))  # type: ignore[arg-type]
    return torch.stack(out)


def test_rlw_normal_is_t_times_the_softmax_of_normal_draws_from_the_step_generator():
    # the paper's draw: x ~ N(0, I), lambda = softmax(x); mtbench's weights are T lambda
    x = torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    e = [math.exp(v) for v in x]
    w = [2 * v / sum(e) for v in e]
    grad = backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=5)  # dL/dth = (2 th_0, 3) = (2, 3)
    assert grad.tolist() == pytest.approx([2 * w[0], 3 * w[1]], rel=1e-12)
    # randomness from the step's generator only: the same seed, the same weights; another, others
    assert backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=5).tolist() == grad.tolist()
    assert backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=6).tolist() != grad.tolist()


def test_rlw_uniform_is_t_times_the_softmax_of_uniform_draws():
    x = torch.rand(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    e = [math.exp(v) for v in x]
    grad = backward_of(COMBINERS["rlw"](2, distribution="uniform"), [1.0, 2.0], gen_seed=5)
    assert grad.tolist() == pytest.approx([2 * 2 * e[0] / sum(e), 3 * 2 * e[1] / sum(e)], rel=1e-12)


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli"])
def test_rlw_weights_sum_to_t(distribution):
    w = rlw_weights(distribution, 3, 200)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.full((200,), 3.0, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_rlw_bernoulli_and_constrained_bernoulli_draw_their_supports_evenly():
    n = 3000
    # bernoulli, two tasks: (1,0), (0,1), (1,1) with probability 1/3 each -> w = (2,0), (0,2), (1,1)
    w = rlw_weights("bernoulli", 2, n)
    seen = {tuple(r): 0 for r in [(2.0, 0.0), (0.0, 2.0), (1.0, 1.0)]}
    for row in w.tolist():
        seen[tuple(row)] += 1  # (a KeyError if any other vector is drawn)
    assert all(abs(c / n - 1 / 3) < 0.04 for c in seen.values()), seen
    # constrained_bernoulli, three tasks: one task at weight 3, each with probability 1/3
    w = rlw_weights("constrained_bernoulli", 3, n)
    assert ((w == 0) | (w == 3)).all() and ((w == 3).sum(1) == 1).all()
    assert all(abs(f - 1 / 3) < 0.04 for f in ((w == 3).double().mean(0)).tolist())
    # beyond 62 tasks the fallback draw: still weights summing to T on the drawn tasks
    w = rlw_weights("bernoulli", 70, 5)
    assert ((w == 0) | (w > 0)).all() and torch.allclose(w.sum(1), torch.full((5,), 70.0, dtype=torch.float64))


def test_rlw_dirichlet_is_uniform_on_the_simplex():
    # Dirichlet(1, 1): lambda_0 ~ U(0, 1), i.e. w_0 / 2 has mean 1/2 and variance 1/12
    w = rlw_weights("dirichlet", 2, 4000)[:, 0] / 2
    assert abs(float(w.mean()) - 0.5) < 0.02 and abs(float(w.var()) - 1 / 12) < 0.01
    assert abs(float((w < 0.25).double().mean()) - 0.25) < 0.03


def test_rlw_unknown_distribution_is_one_line_naming_the_choices():
    with pytest.raises(MtbenchError) as err:
        COMBINERS["rlw"](2, distribution="gaussian")
    assert str(err.value) == (
        "combiner.distribution='gaussian' is not allowed for combiner=rlw; "
        "choose one of: normal, uniform, dirichlet, bernoulli, constrained_bernoulli"
    )

"""GradNorm (mtbench/combiners/gradnorm.py): its weight updates by hand, its state, and the gradient
norms it reads against per-task backward passes."""

from __future__ import annotations

import copy

import pytest
import torch
from model_steps import (
    T,
    assert_close_list,
    conv_step,
    grads_of,
    make_batch,
    make_conv_model,
    make_model,
    step_for,
)
from torch import nn

from mtbench.combiners import COMBINERS, Step
from mtbench.models import LinearHeads, MultiTaskModel


def test_gradnorm_first_update_by_hand():
    """Two tasks. Step 1: L_i(0) = L_i(t) so r_i = 1 and the target is mean(G) for both.
    With ||dL_1/dW|| > ||dL_2/dW|| and w = (1, 1): G_1 > mean > G_2, so dL_grad/dw = (+n_1, -n_2);
    Adam's first step moves each weight by lr * sign(grad): w = (1 - lr, 1 + lr), already summing to 2.
    The network's gradient at step 1 is the baseline's (w = 1)."""
    torch.manual_seed(0)
    W = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        W.weight.copy_(torch.eye(2))
    model = MultiTaskModel(nn.Sequential(W), LinearHeads(2, 2), rep_dim=2).double()
    with torch.no_grad():
        model.heads.linear.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        model.heads.linear.bias.zero_()
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    rep, out = model(x)
    losses = 0.5 * out[0] ** 2  # L_1 = 4.5 x1^2... : dL_1/dW = 9 * e1 x^T, dL_2/dW = 1 * e2 x^T
    comb = COMBINERS["gradnorm"](2, weight_lr=0.1)
    comb.backward(Step(model, x, rep, out, losses))
    torch.testing.assert_close(comb.w.detach(), torch.tensor([0.9, 1.1], dtype=torch.float64), rtol=0, atol=1e-6)
    expected = torch.autograd.grad(0.5 * (model(x)[1][0] ** 2).sum(), [W.weight])[0]
    torch.testing.assert_close(W.weight.grad, expected)

    # Step 2: task 1's loss falls to half its initial value, task 2's stays: Ltilde = (0.5, 1),
    # r = (2/3, 4/3). G = (0.9 * n_1, 1.1 * n_2) with n_1 = 9 sqrt(2) * 0.5... computed explicitly:
    model.zero_grad()
    with torch.no_grad():
        model.heads.linear.weight.mul_(torch.tensor([[2**-0.25], [1.0]], dtype=torch.float64))
    rep, out = model(x)
    losses = 0.5 * out[0] ** 2
    n = torch.stack([torch.autograd.grad(losses[i], W.weight, retain_graph=True)[0].norm() for i in range(2)])
    ratio = losses.detach() / torch.tensor([4.5, 0.5], dtype=torch.float64)
    r = ratio / ratio.mean()
    w_prev = torch.tensor([0.9, 1.1], dtype=torch.float64)
    G = w_prev * n
    grad = torch.sign(G - G.mean() * r**1.5) * n
    # Adam's second step with (beta1, beta2) = (0.9, 0.999), first gradient g1 = (n1_0, -n2_0):
    comb.backward(Step(model, x, rep, out, losses))
    assert float(torch.sign(grad[0])) != 0
    moved = comb.w.detach() - w_prev * 2 / w_prev.sum()
    assert torch.all(torch.sign(moved) == -torch.sign(grad)) or torch.allclose(moved, torch.zeros(2), atol=1e-9)
    assert comb.w.detach().sum().item() == pytest.approx(2.0)
    # the network got sum_i w_i L_i with the weights before this update
    expected = torch.autograd.grad((w_prev * 0.5 * model(x)[1][0] ** 2).sum(), [W.weight])[0]
    torch.testing.assert_close(W.weight.grad, expected)


def test_gradnorm_weights_track_and_state_round_trips():
    model = make_model()
    x, y = make_batch()
    comb = COMBINERS["gradnorm"](T)
    for _ in range(3):
        model.zero_grad()
        comb.backward(step_for(model, x, y))
    assert comb.w.detach().sum().item() == pytest.approx(T)
    state = comb.state_dict()
    other = COMBINERS["gradnorm"](T)
    other.load_state_dict(state)
    model.zero_grad()
    comb.backward(step_for(model, x, y))
    g1 = grads_of(model)
    model.zero_grad()
    other.backward(step_for(model, x, y))
    assert_close_list(grads_of(model), g1)
    torch.testing.assert_close(other.w.detach(), comb.w.detach())


@pytest.mark.parametrize("grad_at", ["last_shared", "representation"])
def test_gradnorm_norms_match_per_task_gradients(grad_at, monkeypatch):
    import mtbench.combiners.gradnorm as gradnorm_module

    calls = []
    real = gradnorm_module.factored_gram
    monkeypatch.setattr(gradnorm_module, "factored_gram", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = make_conv_model()
    comb = COMBINERS["gradnorm"](T, grad_at=grad_at)
    for _ in range(3):
        st = conv_step(model)
        at = st.rep if grad_at == "representation" else comb.last_shared_weight(model)
        expected = torch.stack([torch.autograd.grad(st.losses[i], at, retain_graph=True)[0].norm() for i in range(T)])
        torch.testing.assert_close(comb.grad_norms(st), expected, rtol=1e-12, atol=1e-15)
    assert comb.capture.watching(model.trunk[6]) == (grad_at == "last_shared")
    assert len(calls) == (2 if grad_at == "last_shared" else 0)  # steps 1 and 2 took the factored form


def test_gradnorm_starts_at_the_representation_through_linear_heads_only():
    # through the stock linear heads the per-task passes start at the representation, from the
    # closed-form gradients there; other heads start at the losses; the norms are the same
    model = make_conv_model()
    other = copy.deepcopy(model)
    other.heads = nn.Sequential(nn.Linear(32, T)).double()  # not LinearHeads: no closed form
    other.heads[0].load_state_dict(model.heads.linear.state_dict())
    comb = COMBINERS["gradnorm"](T)
    st, st_other = conv_step(model), conv_step(other)
    assert comb._cotangents(st)[0] is st.rep
    assert comb._cotangents(st_other)[0] is st_other.losses
    torch.testing.assert_close(comb.grad_norms(st), comb.grad_norms(st_other), rtol=1e-12, atol=1e-15)

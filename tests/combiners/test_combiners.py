"""Each combiner as a whole (gradients into ``.grad``), against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtbench.combiners import COMBINERS, Step
from mtbench.combiners.functional import mgda_weights, pcgrad
from mtbench.errors import MtbenchError
from mtbench.models import LinearHeads, MultiTaskModel

T, B, D_IN, D_REP = 3, 5, 4, 6


def make_model(seed: int = 0, dtype=torch.float64) -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    return MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP).to(dtype)


def make_batch(seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=dtype)
    y = (torch.rand(B, T, generator=g) < 0.5).to(dtype)
    return x, y


def step_for(model, x, y, gen_seed: int = 0, input_grad: bool = False) -> Step:
    x = x.clone().requires_grad_(input_grad)
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    gen = torch.Generator().manual_seed(gen_seed)
    return Step(model, x, rep, out, losses, gen, gen)


def grads_of(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def run_combiner(name: str, seed: int = 0, **options):
    model = make_model(seed)
    x, y = make_batch(seed + 1)
    comb = COMBINERS[name](T, **options)
    comb.backward(step_for(model, x, y, input_grad=comb.needs_input_grad))
    return model, comb, grads_of(model)


def baseline_grads(seed: int = 0):
    return run_combiner("baseline", seed)[2]


def per_task_param_grads(model, x, y):
    """Loop of T separate backward passes: [T, P] over the shared parameters (independent)."""
    rows = []
    for i in range(T):
        st = step_for(model, x, y)
        g = torch.autograd.grad(st.losses[i], model.shared_parameters())
        rows.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(rows)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def assert_close_list(a, b, **kw):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **kw)


# -- the baseline's gradient is the reference scale ---------------------------------------------


def test_baseline_is_grad_of_sum():
    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    expected = torch.autograd.grad(st.losses.sum(), list(model.parameters()))
    assert_close_list(baseline_grads(), list(expected))


@pytest.mark.parametrize("name", ["graddrop", "random_graddrop"])
def test_graddrop_with_leak_one_is_the_baseline(name):
    assert_close_list(run_combiner(name, leak=1.0)[2], baseline_grads(), rtol=1e-12, atol=1e-12)
    assert_close_list(
        run_combiner(name, leak=[1.0] * T, batch_separated=False)[2], baseline_grads(), rtol=1e-12, atol=1e-12
    )


def test_graddrop_masks_apply_to_trunk_only_and_drop_something():
    model, _, got = run_combiner("graddrop")
    base = baseline_grads()
    n_head = len(list(model.heads.parameters()))
    assert_close_list(got[-n_head:], base[-n_head:], rtol=1e-12, atol=1e-12)  # heads: own gradients
    assert not torch.allclose(flat(got[:-n_head]), flat(base[:-n_head]))


def test_graddrop_trunk_gradient_is_vjp_of_functional_rule():
    from mtbench.combiners.functional import graddrop

    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    G = torch.stack([torch.autograd.grad(st.losses[i], st.rep, retain_graph=True)[0] for i in range(T)])
    combined = graddrop(G, st.rep.detach(), leak=0.2, generator=torch.Generator().manual_seed(0))
    expected = torch.autograd.grad(st.rep, model.shared_parameters(), combined)
    _, _, got = run_combiner("graddrop", leak=0.2)
    assert_close_list(got[: len(expected)], list(expected), rtol=1e-10, atol=1e-12)


# -- PCGrad ---------------------------------------------------------------------------------------


def test_pcgrad_params_level_matches_loop_of_backward_passes():
    model = make_model()
    x, y = make_batch()
    per_task = per_task_param_grads(model, x, y)
    expected = pcgrad(per_task, generator=torch.Generator().manual_seed(0))
    for chunk in (1, 2, 8):
        m, _, got = run_combiner("pcgrad", level="params", chunk_size=chunk)
        n_shared = len(m.shared_parameters())
        torch.testing.assert_close(flat(got[:n_shared]), expected, rtol=1e-10, atol=1e-12)
        assert_close_list(got[n_shared:], baseline_grads()[n_shared:], rtol=1e-12, atol=1e-12)


def test_pcgrad_representation_level():
    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    G = torch.stack([torch.autograd.grad(st.losses[i], st.rep, retain_graph=True)[0] for i in range(T)])
    combined = pcgrad(G.flatten(1), generator=torch.Generator().manual_seed(0)).view_as(st.rep)
    expected = torch.autograd.grad(st.rep, model.shared_parameters(), combined)
    got = run_combiner("pcgrad", level="representation")[2]
    assert_close_list(got[: len(expected)], list(expected), rtol=1e-10, atol=1e-12)


# -- MGDA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["representation", "params"])
@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_shared_gradient_is_T_times_weighted_sum(level, normalization):
    model = make_model()
    x, y = make_batch()
    st = step_for(model, x, y)
    per_task = per_task_param_grads(model, x, y)
    if level == "representation":
        basis = torch.stack(
            [torch.autograd.grad(st.losses[i], st.rep, retain_graph=True)[0].flatten() for i in range(T)]
        )
    else:
        basis = per_task
    n = {
        "none": torch.ones(T, dtype=torch.float64),
        "l2": basis.norm(dim=1),
        "loss": st.losses.detach(),
        "loss+": st.losses.detach() * basis.norm(dim=1),
    }[normalization]
    w = mgda_weights(basis / n[:, None])
    assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    m, comb, got = run_combiner("mgda", level=level, normalization=normalization)
    n_shared = len(m.shared_parameters())
    torch.testing.assert_close(flat(got[:n_shared]), T * (w @ per_task), rtol=1e-7, atol=1e-10)
    assert_close_list(got[n_shared:], baseline_grads()[n_shared:], rtol=1e-12, atol=1e-12)
    m, comb, got = run_combiner("mgda", level=level, normalization=normalization, rescale=False)
    torch.testing.assert_close(flat(got[:n_shared]), w @ per_task, rtol=1e-7, atol=1e-10)


# -- GradNorm -------------------------------------------------------------------------------------


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


def test_gradnorm_graddrop_is_gradnorm_when_nothing_is_dropped():
    a = run_combiner("gradnorm")
    b = run_combiner("gradnorm_graddrop", graddrop={"leak": 1.0})
    assert_close_list(b[2], a[2], rtol=1e-12, atol=1e-12)
    c = run_combiner("gradnorm_graddrop")
    assert not torch.allclose(flat(c[2]), flat(a[2]))


# -- clipping and the gradient penalty ------------------------------------------------------------


def test_clip_bounds_the_global_norm_and_keeps_direction():
    base = flat(baseline_grads())
    got = flat(run_combiner("clip", max_norm=0.01)[2])
    assert got.norm().item() == pytest.approx(0.01, rel=1e-3)  # torch divides by (norm + 1e-6)
    torch.testing.assert_close(got / got.norm(), base / base.norm())
    big = flat(run_combiner("clip", max_norm=1e6)[2])
    torch.testing.assert_close(big, base)


@pytest.mark.parametrize("target", ["input", "representation"])
def test_gradpenalty_gradient_matches_finite_differences(target):
    lam = 0.3
    model = make_model()
    x, y = make_batch()

    def objective() -> torch.Tensor:
        xx = x.clone().requires_grad_(True)
        rep, out = model(xx)
        losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
        z = xx if target == "input" else rep
        (g,) = torch.autograd.grad(losses.sum(), z)
        return (losses.sum() + lam * ((B * g).flatten(1) ** 2).sum(1).mean()).detach()

    comb = COMBINERS["gradpenalty"](T, **{"lambda": lam, "target": target})
    comb.backward(step_for(model, x, y, input_grad=comb.needs_input_grad))
    got = flat(grads_of(model))
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    up = objective()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
    down = objective()
    fd = (up - down) / (2 * h)
    assert (got @ flat(direction)).item() == pytest.approx(fd.item(), rel=1e-6)
    # and the penalty matters: lambda = 0 gives the baseline
    zero = COMBINERS["gradpenalty"](T, **{"lambda": 0.0, "target": target})
    model.zero_grad()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    zero.backward(step_for(model, x, y, input_grad=zero.needs_input_grad))
    assert_close_list(grads_of(model), baseline_grads())
    assert not torch.allclose(got, flat(baseline_grads()))


# -- per-task gradients: the batched call and its fallback agree -------------------------------------


def test_batched_and_fallback_per_task_gradients_agree(monkeypatch):
    model = make_model()
    x, y = make_batch()
    comb = COMBINERS["pcgrad"](T)
    st = step_for(model, x, y)
    rep_grads = comb.task_grads_at(st.losses, st.rep)
    batched = comb.task_grads_at_params(st, rep_grads, model.shared_parameters(), chunk_size=8)
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("vmap unsupported here")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    st = step_for(model, x, y)
    rep_loop = comb.task_grads_at(st.losses, st.rep)
    looped = comb.task_grads_at_params(st, rep_loop, model.shared_parameters(), chunk_size=8)
    torch.testing.assert_close(rep_loop, rep_grads)
    torch.testing.assert_close(looped, batched)
    torch.testing.assert_close(batched, per_task_param_grads(model, x, y))


# -- bad options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("pcgrad", {"levle": "params"}, ["combiner.levle", "level", "chunk_size"]),
        ("baseline", {"max_norm": 1}, ["combiner.max_norm", "combiner=baseline"]),
        ("graddrop", {"leak": [0.1, 0.2]}, ["combiner.leak", "2 values", "3 tasks"]),
        ("graddrop", {"leak": 1.5}, ["combiner.leak", "[0, 1]"]),
        ("graddrop", {"leak": [0.0, -0.1, 0.0]}, ["combiner.leak", "[0, 1]"]),
        ("graddrop", {"f": "tanh"}, ["combiner.f", "identity, linear, sigmoid"]),
        ("random_graddrop", {"f": "identity"}, ["combiner.f", "is not an option"]),
        ("mgda", {"normalization": "l1"}, ["combiner.normalization", "none, l2, loss, loss+"]),
        ("mgda", {"level": "input"}, ["combiner.level", "representation, params"]),
        ("clip", {"max_norm": -1}, ["combiner.max_norm", "positive"]),
        ("gradpenalty", {"lambda": -1}, ["combiner.lambda", ">= 0"]),
        ("gradnorm_graddrop", {"graddrop": {"leak": 2}}, ["combiner.graddrop.leak"]),
        ("gradnorm_graddrop", {"gradnorm": {"beta": 2}}, ["combiner.gradnorm.beta", "alpha"]),
    ],
)
def test_bad_options_name_the_option(name, options, words):
    with pytest.raises(MtbenchError) as err:
        COMBINERS[name](T, **options)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


def test_null_leak_takes_the_tasks_default():
    from omegaconf import OmegaConf

    from mtbench.combiners import build_combiner

    cfg = OmegaConf.create({"name": "graddrop", "leak": None})
    assert build_combiner(cfg, T).leak == 0.0
    assert build_combiner(cfg, T, default_leak=[1.0, 0.0, 0.0]).leak == [1.0, 0.0, 0.0]
    nested = OmegaConf.create({"name": "gradnorm_graddrop", "gradnorm": {}, "graddrop": {"leak": None}})
    assert build_combiner(nested, T, default_leak=[1.0, 0.0, 0.5]).combine.leak == [1.0, 0.0, 0.5]
    explicit = OmegaConf.create({"name": "graddrop", "leak": 0.25})
    assert build_combiner(explicit, T, default_leak=[1.0, 0.0, 0.0]).leak == 0.25


# -- fast paths: the same numbers as the plain computations --------------------------------------------


def _mixing_losses(out, y):
    """Each task's loss reads several logit columns (no per-column structure)."""
    per = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.3, 0.0, 1.0]], dtype=out.dtype)
    return mix @ per + 0.1 * out.pow(2).mean(0).flip(0)


@pytest.mark.parametrize("kind", ["per_column", "mixing", "other_heads"])
def test_rep_task_grads_match_batched_autograd(kind):
    from mtbench.combiners.base import Combiner

    model = make_model()
    if kind == "other_heads":  # not the stock LinearHeads: the general batched call
        model.heads = nn.Sequential(nn.Linear(D_REP, T)).double()
    x, y = make_batch()
    rep, out = model(x)
    losses = (
        _mixing_losses(out, y)
        if kind == "mixing"
        else F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    )
    st = Step(model, x, rep, out, losses)
    rg = Combiner.rep_task_grads(st)
    assert rg.factored == (kind != "other_heads")
    assert (rg._diag is not None) == (kind == "per_column")
    ref = Combiner.task_grads_at(losses, rep)
    flat_ref = ref.flatten(1)
    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    torch.testing.assert_close(rg.gram(), flat_ref @ flat_ref.T, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rg.sq_norms(), (flat_ref**2).sum(1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rg.combine(w), torch.tensordot(w, ref, dims=1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rg.full(), ref, rtol=1e-12, atol=1e-15)


def make_conv_model(seed: int = 0, inplace: bool = False) -> MultiTaskModel:
    """A small conv trunk whose last convolution (2x2 output) and linear layer have few
    positions and wide weights: the factored Gram form applies to both. ``inplace``: in-place
    ReLUs right after both (as small_cnn's last linear layer has), so their captured outputs
    hold the activations."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True) if inplace else nn.Tanh(),
    )
    return MultiTaskModel(trunk, LinearHeads(32, T), rep_dim=32).double()


def step_task_grads(step) -> torch.Tensor:
    """[T, P]: each task's gradient of the shared parameters, one autograd call per task."""
    params = step.model.shared_parameters()
    return torch.stack([flat(torch.autograd.grad(step.losses[i], params, retain_graph=True)) for i in range(T)])


def conv_step(model, gen_seed=0):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(2, T, generator=g) < 0.5).double()
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    gen = torch.Generator().manual_seed(gen_seed)
    return Step(model, x, rep, out, losses, gen, gen)


@pytest.mark.parametrize("budget", [None, 1e-4])
@pytest.mark.parametrize("name", ["pcgrad", "mgda"])
def test_params_level_factored_layers_and_memory_budget(name, budget):
    model = make_conv_model()
    st = conv_step(model)
    params = model.shared_parameters()
    per_task = step_task_grads(st)
    expected = (
        pcgrad(per_task, generator=torch.Generator().manual_seed(0))
        if name == "pcgrad"
        else T * (mgda_weights(per_task) @ per_task)
    )
    comb = COMBINERS[name](T, level="params", memory_budget_mb=budget)
    for _ in range(3):  # step 0: plain backward passes (the hooks start watching); then factored
        model.zero_grad()
        comb.backward(conv_step(model))
        got = flat([p.grad for p in params])
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        heads = [p.grad for p in model.head_parameters()]
        torch.testing.assert_close(
            flat(heads), flat(torch.autograd.grad(st.losses.sum(), model.head_parameters(), retain_graph=True))
        )
    factored = comb.last_factored_layers
    assert {type(m) for m in factored} == {nn.Conv2d, nn.Linear}


def test_params_level_budget_bounds_held_rows():
    from mtbench.combiners.taskgrads import ParamTaskGrads

    model = make_conv_model()
    st = conv_step(model)
    comb = COMBINERS["pcgrad"](T)
    rg = comb.rep_task_grads(st)
    params = model.shared_parameters()
    width = sum(p.numel() for p in params)
    full = ParamTaskGrads(st, rg.full(), params)
    assert full.rows == T and full.backward_passes == T
    small = ParamTaskGrads(st, rg.full(), params, budget_bytes=2 * width * 8)
    assert small.rows == 2 and small.stack is None and small.backward_passes > T
    torch.testing.assert_close(small.gram(), full.gram(), rtol=1e-12, atol=1e-15)


def test_stale_or_repeated_captures_fall_back_to_the_plain_path():
    model = make_conv_model()
    st = conv_step(model)
    params = model.shared_parameters()
    per_task = step_task_grads(st)
    expected = pcgrad(per_task, generator=torch.Generator().manual_seed(0))
    comb = COMBINERS["pcgrad"](T)
    model.zero_grad()
    comb.backward(conv_step(model))  # installs the hooks
    conv_step(model)  # a forward without a combiner step: its captures are stale
    model.zero_grad()
    comb.backward(conv_step(model))
    assert comb.last_factored_layers == []  # two captured calls: not used
    torch.testing.assert_close(flat([p.grad for p in params]), expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        model(torch.zeros(1, 3, 4, 4, dtype=torch.float64))  # evaluation: nothing captured
    model.zero_grad()
    comb.backward(conv_step(model))
    assert len(comb.last_factored_layers) == 2
    torch.testing.assert_close(flat([p.grad for p in params]), expected, rtol=1e-10, atol=1e-12)


def test_layers_modified_in_place_after_the_call_take_the_plain_path():
    # the factored form needs the gradient at the layer's own output; after an in-place ReLU
    # the captured output is the activation, so the hooks must not hand it over
    model = make_conv_model(inplace=True)
    st = conv_step(model)
    params = model.shared_parameters()
    per_task = step_task_grads(st)
    expected = pcgrad(per_task, generator=torch.Generator().manual_seed(0))
    comb = COMBINERS["pcgrad"](T, level="params")
    comb.prepare(model)
    for _ in range(2):
        model.zero_grad()
        comb.backward(conv_step(model))
        torch.testing.assert_close(flat([p.grad for p in params]), expected, rtol=1e-10, atol=1e-12)
        assert comb.last_factored_layers == []
    norms = COMBINERS["gradnorm"](T)
    norms.prepare(model)
    weight = norms.last_shared_weight(model)
    for _ in range(2):
        st = conv_step(model)
        want = torch.stack([torch.autograd.grad(st.losses[i], weight, retain_graph=True)[0].norm() for i in range(T)])
        torch.testing.assert_close(norms.grad_norms(st), want, rtol=1e-12, atol=1e-15)


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


def test_pcgrad_weights_from_gram_reproduce_pcgrad():
    from mtbench.combiners.functional import pcgrad_weights_from_gram

    grads = torch.randn(5, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    w = pcgrad_weights_from_gram(grads @ grads.T, ga)
    torch.testing.assert_close(w @ grads, pcgrad(grads, gb), rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.rand(3, generator=ga), torch.rand(3, generator=gb))
    assert torch.equal(pcgrad_weights_from_gram(torch.eye(3)), torch.ones(3, dtype=torch.float64))


def test_layer_capture_is_not_shared_by_a_copied_model():
    import copy

    model = make_conv_model()
    comb = COMBINERS["pcgrad"](T)
    comb.backward(conv_step(model))
    clone = copy.deepcopy(model)
    conv_step(clone)
    assert comb.task_grads.capture._calls == {}

"""Per-task gradients (mtbench/combiners/taskgrads.py): the batched call and its fallback, the
per-column loss path, the factored layers and the memory budget at the parameters, against
plain per-task backward passes."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from model_steps import (
    D_REP,
    T,
    conv_step,
    flat,
    grads_of,
    make_batch,
    make_conv_model,
    make_model,
    per_task_param_grads,
    step_for,
)
from torch import nn

from mtbench.combiners import COMBINERS, Step
from mtbench.combiners.functional import mgda_weights, pcgrad
from mtbench.combiners.taskgrads import column_loss_grads, rep_task_grads, task_grads_at
from mtbench.data.base import BinaryAttributeTask


def _mixing_losses(out, y):
    """Each task's loss reads several logit columns (no per-column structure)."""
    per = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.3, 0.0, 1.0]], dtype=out.dtype)
    return mix @ per + 0.1 * out.pow(2).mean(0).flip(0)


def step_task_grads(step) -> torch.Tensor:
    """[T, P]: each task's gradient of the shared parameters, one autograd call per task."""
    params = step.model.shared_parameters()
    return torch.stack([flat(torch.autograd.grad(step.losses[i], params, retain_graph=True)) for i in range(T)])


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


def test_layer_capture_is_not_shared_by_a_copied_model():

    model = make_conv_model()
    comb = COMBINERS["pcgrad"](T)
    comb.backward(conv_step(model))
    clone = copy.deepcopy(model)
    conv_step(clone)
    assert comb.task_grads.capture._calls == {}


def test_column_losses_give_the_jacobian_paths_gradients():
    model = make_model()
    x, y = make_batch()
    step = dataclasses.replace(step_for(model, x, y), column_losses=True)
    fast = rep_task_grads(step)
    assert fast.column_factors() is not None
    ref = task_grads_at(step.losses, step.rep)  # T autograd passes through heads and losses
    flat = ref.flatten(1)
    torch.testing.assert_close(fast.full(), ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(fast.gram(), flat @ flat.T, rtol=1e-12, atol=1e-15)
    w = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(fast.combine(w), torch.tensordot(w, ref, dims=1), rtol=1e-12, atol=1e-15)
    # the promise is the caller's: without it the same step takes the Jacobian path
    assert rep_task_grads(dataclasses.replace(step, column_losses=False))._jac is not None


def test_column_loss_grads_refuse_shapes_that_cannot_be_per_column():
    out = torch.randn(4, 3, requires_grad=True)
    assert column_loss_grads(out.sum(0)[:2], out) is None  # 2 losses, 3 columns
    assert column_loss_grads(out.sum(), out) is None  # not a vector of losses


def test_binary_attribute_losses_are_per_column_unless_two_way_or_overridden():
    task = BinaryAttributeTask.__new__(BinaryAttributeTask)
    assert task.column_losses
    task.two_way = True
    assert not task.column_losses

    class Mixing(BinaryAttributeTask):
        def losses(self, outputs, labels):
            return _mixing_losses(outputs, labels)

    assert not Mixing.__new__(Mixing).column_losses


def test_trainer_passes_the_tasks_promise(tmp_path):
    from mtbench.train.step import TrainStep

    model = make_model()
    seen = []

    class Spy(COMBINERS["baseline"]):
        def backward(self, step):
            seen.append(step.column_losses)
            super().backward(step)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def losses(out, y):
        return F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)

    x, y = make_batch()
    TrainStep(model, Spy(T), opt, losses, torch.device("cpu"), column_losses=True)(x, y)
    TrainStep(model, Spy(T), opt, losses, torch.device("cpu"))(x, y)
    assert seen == [True, False]


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "upgrad", "imtl_g", "gradvac"])
def test_gram_combiners_with_per_column_losses_give_the_same_gradients(name):
    """At the representation the Gram matrix, the combination and the heads' closed-form
    gradient (e^T A, sum_b e) from per-column losses equal the Jacobian path's."""
    out = []
    for column in (False, True):
        model = make_model()
        x, y = make_batch()
        comb = COMBINERS[name](T, level="representation")
        comb.backward(dataclasses.replace(step_for(model, x, y), column_losses=column))
        out.append(grads_of(model))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert all(a.abs().sum() > 0 for a in out[1])  # every parameter, heads included, got its gradient


@pytest.mark.parametrize("name", ["graddrop", "gradnorm_graddrop", "mgda", "pcgrad", "nash_mtl", "fairgrad"])
def test_one_backward_pass_gives_the_two_pass_gradients(name, monkeypatch):
    """With linear heads and per-column losses the combination replaces the gradient arriving at
    the representation inside one backward pass of sum_i L_i: the same gradients as the per-task
    gradients taken first, the heads' closed form and a second pass through the trunk."""
    import mtbench.combiners.graddrop as graddrop_mod
    import mtbench.combiners.gramweighted as gramweighted_mod
    from mtbench.combiners import taskgrads

    taken = []

    def spy(step, combination):
        taken.append(taskgrads.backward_replacing_rep_grad(step, combination))
        return taken[-1]

    out = []
    for one_pass in (True, False):
        replace = spy if one_pass else (lambda step, combination: False)
        monkeypatch.setattr(graddrop_mod, "backward_replacing_rep_grad", replace)
        monkeypatch.setattr(gramweighted_mod, "backward_replacing_rep_grad", replace)
        model = make_model()
        x, y = make_batch()
        options = {"level": "representation"} if "level" in COMBINERS[name].options else {}
        comb = COMBINERS[name](T, **options)
        gen = torch.Generator().manual_seed(3)
        step = dataclasses.replace(step_for(model, x, y), column_losses=True, generator=gen, cpu_generator=gen)
        comb.backward(step)
        out.append(grads_of(model))
    assert taken == [True]
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # without the promise (or without linear heads) nothing is done and the caller's path runs
    model = make_model()
    step = step_for(model, *make_batch())
    assert not taskgrads.backward_replacing_rep_grad(step, lambda g: None)
    assert all(p.grad is None for p in model.parameters())

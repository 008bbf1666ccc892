"""Fast paths of the per-task gradients at the representation give the plain computation's
numbers: per-column losses (one backward pass instead of a Jacobian) and GradDrop on the factored
gradients of linear heads (two products instead of the [T, B, D] stack); a Cholesky solve where a
pseudo-inverse would keep every direction (IMTL-G, ConFIG)."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_combiners import T, _mixing_losses, baseline_grads, grads_of, make_batch, make_model, step_for

from mtbench.combiners import COMBINERS
from mtbench.combiners import functional as fn
from mtbench.combiners.taskgrads import column_loss_grads, rep_task_grads, task_grads_at
from mtbench.data.base import BinaryAttributeTask


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


@pytest.mark.parametrize("batch_separated", [True, False])
@pytest.mark.parametrize("leak", [None, 0.25, [0.0, 0.5, 1.0]])
@pytest.mark.parametrize("f", ["identity", "sigmoid", "random"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_graddrop_factored_is_graddrop_on_the_stack(batch_separated, leak, f, renormalize):
    g = torch.Generator().manual_seed(3)
    B, D = 16, 12
    e = torch.randn(B, T, generator=g, dtype=torch.float64)
    weight = torch.randn(T, D, generator=g, dtype=torch.float64)
    weight[1, :3] = 0  # zero gradients drop out of both signs
    e[0] = 0
    act = torch.randn(B, D, generator=g, dtype=torch.float64) if batch_separated else None
    stack = e.T[:, :, None] * weight[:, None, :]  # [T, B, D], computed independently
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    if f == "random":
        ref = fn.random_graddrop(stack, act, leak=leak, generator=g1, renormalize=renormalize)
    else:
        ref = fn.graddrop(stack, act, leak=leak, f=f, k=1.5, generator=g1, renormalize=renormalize)
    got = fn.graddrop_factored(e, weight, act, leak=leak, f=f, k=1.5, generator=g2, renormalize=renormalize)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same draws consumed


@pytest.mark.parametrize("name", ["graddrop", "random_graddrop", "gradnorm_graddrop"])
@pytest.mark.parametrize("batch_separated", [True, False])
def test_graddrop_combiners_take_the_factored_path_with_the_same_gradients(name, batch_separated):
    options = {"batch_separated": batch_separated} if name != "gradnorm_graddrop" else {}
    out = []
    for column in (False, True):
        model = make_model()
        x, y = make_batch()
        comb = COMBINERS[name](T, **options)
        comb.backward(dataclasses.replace(step_for(model, x, y), column_losses=column))
        out.append(grads_of(model))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # something was dropped: the trunk's gradients are not the baseline's
    assert any(not torch.allclose(a, b) for a, b in zip(out[1], baseline_grads()))


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

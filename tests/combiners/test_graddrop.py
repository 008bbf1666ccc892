"""GradDrop and random GradDrop (mtbench/combiners/graddrop.py, random_graddrop.py): the pure function
against a reference loop over tasks and the sign-purity distribution, the combiner's trunk gradient
against the function's vector-Jacobian product, and the factored path against the plain stack."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from model_steps import (
    T,
    assert_close_list,
    baseline_grads,
    flat,
    grads_of,
    make_batch,
    make_model,
    run_combiner,
    seeded,
    step_for,
)

from mtbench.combiners import COMBINERS
from mtbench.combiners import functional as fn
from mtbench.combiners.functional import (
    graddrop,
    random_graddrop,
)


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


def reference_graddrop(grads, activation, leak, prob_fn, generator, eps=1e-7):
    """GradDrop written task by task (and batch element by element) from the paper."""
    n_tasks = grads.shape[0]
    if activation is None:
        signed = [grads[i] for i in range(n_tasks)]
    else:
        signed = []
        for i in range(n_tasks):
            acc = torch.zeros_like(grads[i][0])
            for b in range(activation.shape[0]):
                acc = acc + torch.sign(activation[b]) * grads[i][b]
            signed.append(acc)
    num = torch.zeros_like(signed[0])
    den = torch.zeros_like(signed[0])
    for g in signed:
        num = num + g
        den = den + g.abs()
    purity = 0.5 * (1 + num / (den + eps))
    u = torch.rand(purity.shape, generator=generator, dtype=grads.dtype)
    fp = prob_fn(purity)
    out = torch.zeros_like(grads[0])
    for i in range(n_tasks):
        mask = ((fp > u) & (signed[i] > 0)).to(grads.dtype) + ((fp < u) & (signed[i] < 0)).to(grads.dtype)
        if activation is not None:
            mask = mask.unsqueeze(0)
        out = out + (leak[i] + (1 - leak[i]) * mask) * grads[i]
    return out


N_DRAWS = 20_000


def kept_positive_fraction(out: torch.Tensor) -> float:
    # with gradients +7 and -3 exactly one of them survives at each position
    assert bool(((out == 7.0) | (out == -3.0)).all())
    return (out == 7.0).double().mean().item()


def assert_binomial(fraction: float, p: float):
    sigma = math.sqrt(p * (1 - p) / N_DRAWS)
    assert abs(fraction - p) <= 5 * sigma, (fraction, p)


def test_graddrop_matches_reference_loop():
    gen = seeded(11)
    grads = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    act = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    leak = [0.0, 0.3, 1.0]
    fns = {
        "identity": lambda p: p,
        "linear": lambda p: 0.5 + 0.7 * (p - 0.5),
        "sigmoid": lambda p: torch.sigmoid(4 * 0.7 * (p - 0.5)),
    }
    for f, prob_fn in fns.items():
        for activation in (None, act):
            for seed in range(3):
                out = graddrop(grads, activation, leak, f=f, k=0.7, generator=seeded(seed))
                ref = reference_graddrop(grads, activation, leak, prob_fn, seeded(seed))
                torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out = random_graddrop(grads, act, 0.2, seeded(4))
    ref = reference_graddrop(grads, act, [0.2] * 3, lambda p: torch.full_like(p, 0.5), seeded(4))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_graddrop_all_signs_agree_gives_exact_sum():
    gen = seeded(0)
    magnitudes = torch.rand(4, 6, 9, generator=gen) + 0.5
    position_signs = torch.where(torch.rand(6, 9, generator=gen) < 0.5, -1.0, 1.0)
    activation = torch.randn(6, 9, generator=gen)
    cases = [(g, None) for g in (magnitudes, -magnitudes, magnitudes * position_signs)]
    # batch-separated: per-example gradients carrying sign(A) make every G_i positive
    cases.append((magnitudes * torch.sign(activation), activation))
    for grads, act in cases:
        assert torch.equal(graddrop(grads, act, generator=seeded(1)), grads.sum(0))
        for f in ("linear", "sigmoid"):
            # P = 1 (up to eps) and f(1) > 1/2: kept with probability f(P), not always
            out = graddrop(grads, act, f=f, k=1.0, generator=seeded(1))
            assert bool(((out == grads.sum(0)) | (out == 0)).all())
        # the random control ignores the agreement: all kept or all dropped, about half each
        out = random_graddrop(grads, act, generator=seeded(2))
        kept = out == grads.sum(0)
        assert bool((kept | (out == 0)).all())
        assert 0.2 < kept.double().mean().item() < 0.8


def test_graddrop_full_leak_gives_exact_sum():
    grads = torch.randn(3, 5, 8, generator=seeded(3))
    activation = torch.randn(5, 8, generator=seeded(4))
    for leak in (1.0, [1.0, 1.0, 1.0], torch.ones(3)):
        for act in (None, activation):
            assert torch.equal(graddrop(grads, act, leak, generator=seeded(5)), grads.sum(0))
            assert torch.equal(random_graddrop(grads, act, leak, generator=seeded(5)), grads.sum(0))


def test_graddrop_zero_gradients_give_zeros_without_nan():
    zeros = torch.zeros(3, 4, 5)
    for eps in (1e-7, 0.0):  # eps = 0 makes P = 0/0
        for act in (None, torch.randn(4, 5, generator=seeded(0))):
            for renorm in (False, True):
                out = graddrop(zeros, act, eps=eps, renormalize=renorm, generator=seeded(1))
                assert torch.equal(out, torch.zeros(4, 5))
                out = random_graddrop(zeros, act, 0.5, eps=eps, renormalize=renorm, generator=seeded(1))
                assert torch.equal(out, torch.zeros(4, 5))
    # a zero activation makes every signed gradient 0, so every mask is 0 (leak 0):
    # the output is zero even though the plain sum is not, and renormalising keeps it zero
    grads = torch.randn(2, 3, 4, generator=seeded(2))
    out = graddrop(grads, torch.zeros(3, 4), renormalize=True, eps=0.0, generator=seeded(3))
    assert torch.equal(out, torch.zeros(3, 4))


def test_graddrop_batch_separated_mask_is_shared_by_the_batch():
    gen = seeded(7)
    batch, features = 6, 300
    grads = torch.randn(2, batch, features, generator=gen)
    activation = torch.randn(batch, features, generator=gen)
    out = graddrop(grads, activation, generator=seeded(8))
    # for every feature, one (m1, m2) in {0,1}^2 explains all batch rows at once
    combos = [(0, 0), (1, 0), (0, 1), (1, 1)]
    candidates = torch.stack([(m1 * grads[0:1] + m2 * grads[1:2]).sum(0) for m1, m2 in combos])
    matches = (candidates == out.unsqueeze(0)).all(dim=1)  # [4, features]
    assert bool(matches.any(dim=0).all())
    # and the draw is per feature: both "task 1 only" and "task 2 only" occur
    assert int(matches[1].sum()) > 10 and int(matches[2].sum()) > 10


def test_graddrop_validation_messages():
    grads = torch.randn(40, 6)
    with pytest.raises(ValueError) as err:
        graddrop(grads, leak=[0.1, 0.2, 0.3])
    assert str(err.value) == "leak has 3 values but there are 40 tasks; give one number or one per task"
    bad_calls = [
        (lambda: graddrop(grads, leak=1.5), "leak"),
        (lambda: graddrop(grads, leak=-0.1), "leak"),
        (lambda: graddrop(grads, leak=[0.5] * 39 + [2.0]), "leak"),
        (lambda: graddrop(grads, leak=float("nan")), "leak"),
        (lambda: random_graddrop(grads, leak=[0.0, 0.0]), "leak"),
        (lambda: graddrop(grads, f="tanh"), "f must be one of"),
        (lambda: graddrop(grads, f="linear", k=float("inf")), "k must be a finite number"),
        (lambda: graddrop(grads, f="sigmoid", k=float("nan")), "k must be a finite number"),
        (lambda: graddrop(grads, activation=torch.randn(5)), "activation"),
        (lambda: random_graddrop(torch.randn(2, 3, 4), activation=torch.randn(4, 3)), "activation"),
    ]
    for call, needle in bad_calls:
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert needle in message and "\n" not in message
    with pytest.raises(ValueError) as err:
        graddrop(grads, f="tanh")
    assert all(name in str(err.value) for name in ("identity", "linear", "sigmoid"))


def test_graddrop_keep_probability_in_distribution():
    grads = torch.stack([torch.full((N_DRAWS,), 7.0), torch.full((N_DRAWS,), -3.0)])
    purity = 0.5 * (1 + 4.0 / 10.0)  # 0.7
    assert_binomial(kept_positive_fraction(graddrop(grads, generator=seeded(0))), purity)
    assert_binomial(kept_positive_fraction(random_graddrop(grads, generator=seeded(1))), 0.5)
    assert_binomial(kept_positive_fraction(graddrop(grads, f="linear", k=0.0, generator=seeded(2))), 0.5)
    assert_binomial(kept_positive_fraction(graddrop(grads, f="linear", k=0.5, generator=seeded(3))), 0.6)
    for k in (0.5, 1.0, 2.0):
        expected = 1.0 / (1.0 + math.exp(-4.0 * k * (purity - 0.5)))
        assert_binomial(kept_positive_fraction(graddrop(grads, f="sigmoid", k=k, generator=seeded(4))), expected)


def test_graddrop_keep_probability_batch_separated():
    # per-example gradients whose signed batch sums are +7 and -3 at every feature
    batch = 4
    activation = torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None].expand(batch, N_DRAWS)
    g1 = torch.tensor([1.0, -2.0, 2.0, 2.0])[:, None].expand(batch, N_DRAWS)  # signed sum 1+2+2+2 = 7
    g2 = torch.tensor([-1.0, 1.0, 0.0, -1.0])[:, None].expand(batch, N_DRAWS)  # signed sum -1-1+0-1 = -3
    grads = torch.stack([g1, g2])
    out = graddrop(grads, activation, generator=seeded(9))
    kept_first = (out == g1).all(dim=0)
    kept_second = (out == g2).all(dim=0)
    assert bool((kept_first ^ kept_second).all())
    assert_binomial(kept_first.double().mean().item(), 0.7)


def test_graddrop_per_task_leak_exact():
    # g1 = +1, g2 = -2 at every position: P = (1 + (1 - 2) / 3) / 2 = 1/3.
    # leak = (0, 0.5): keep positive -> 1 + 0.5 * (-2) = 0; keep negative -> -2.
    n = 1000
    grads = torch.stack([torch.ones(n), torch.full((n,), -2.0)]).double()
    out = graddrop(grads, leak=[0.0, 0.5], generator=seeded(12))
    u = torch.rand(n, generator=seeded(12), dtype=torch.float64)
    purity = 0.5 * (1 + (-1.0) / (3.0 + 1e-7))
    expected = torch.where(purity > u, torch.zeros(n, dtype=torch.float64), torch.full((n,), -2.0, dtype=torch.float64))
    assert torch.equal(out, expected)


def test_graddrop_renormalize_matches_plain_sum_norm():
    grads = torch.randn(5, 8, 16, generator=seeded(13), dtype=torch.float64)
    activation = torch.randn(8, 16, generator=seeded(14), dtype=torch.float64)
    for act in (None, activation):
        plain = graddrop(grads, act, generator=seeded(15))
        renorm = graddrop(grads, act, renormalize=True, generator=seeded(15))
        target = grads.sum(0).norm()
        torch.testing.assert_close(renorm.norm(), target, rtol=1e-12, atol=0)
        torch.testing.assert_close(renorm, plain * (target / plain.norm()), rtol=1e-12, atol=1e-12)
        rand = random_graddrop(grads, act, renormalize=True, generator=seeded(16))
        torch.testing.assert_close(rand.norm(), target, rtol=1e-12, atol=0)


def test_graddrop_generator_reproducibility_and_consumption():
    grads = torch.randn(4, 8, 32, generator=seeded(17))
    activation = torch.randn(8, 32, generator=seeded(18))
    for act, draw_shape in ((None, (8, 32)), (activation, (32,))):
        a = graddrop(grads, act, generator=seeded(19))
        b = graddrop(grads, act, generator=seeded(19))
        c = graddrop(grads, act, generator=seeded(20))
        assert torch.equal(a, b) and not torch.equal(a, c)
        # exactly one torch.rand of P's shape is drawn (one value per feature in batch mode)
        gen, ref = seeded(21), seeded(21)
        graddrop(grads, act, generator=gen)
        torch.rand(draw_shape, generator=ref)
        assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=ref))
        assert torch.equal(
            random_graddrop(grads, act, generator=seeded(22)), random_graddrop(grads, act, generator=seeded(22))
        )


def test_graddrop_dtype_and_shape():
    for dtype in (torch.float32, torch.float64):
        grads = torch.randn(3, 2, 5, generator=seeded(23)).to(dtype)
        out = graddrop(grads, torch.randn(2, 5, generator=seeded(24)).to(dtype), generator=seeded(25))
        assert out.dtype == dtype and out.shape == (2, 5)

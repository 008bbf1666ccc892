"""PCGrad (mtbench/combiners/pcgrad.py): the pure function against a direct projection loop and
hand-computed cases, and the combiner at both levels against a loop of backward passes."""

from __future__ import annotations

import itertools

import pytest
import torch
from model_steps import (
    T,
    assert_close_list,
    baseline_grads,
    flat,
    make_batch,
    make_model,
    per_task_param_grads,
    run_combiner,
    seeded,
    step_for,
)

from mtbench.combiners.functional import (
    pcgrad,
)


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


def test_pcgrad_weights_from_gram_reproduce_pcgrad():
    from mtbench.combiners.functional import pcgrad_weights_from_gram

    grads = torch.randn(5, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    w = pcgrad_weights_from_gram(grads @ grads.T, ga)
    torch.testing.assert_close(w @ grads, pcgrad(grads, gb), rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.rand(3, generator=ga), torch.rand(3, generator=gb))
    assert torch.equal(pcgrad_weights_from_gram(torch.eye(3)), torch.ones(3, dtype=torch.float64))


def naive_pcgrad(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Direct PCGrad loop on the vectors, drawing one randperm per task in task order."""
    n_tasks = grads.shape[0]
    total = torch.zeros_like(grads[0])
    for i in range(n_tasks):
        g = grads[i].clone()
        others = [j for j in range(n_tasks) if j != i]
        for p in torch.randperm(n_tasks - 1, generator=generator).tolist():
            gj = grads[others[p]]
            sq = torch.dot(gj, gj)
            if sq == 0:
                continue
            d = torch.dot(g, gj)
            if d < 0:
                g = g - d / sq * gj
        total = total + g
    return total


def project_in_order(grads: torch.Tensor, i: int, order) -> torch.Tensor:
    g = grads[i].clone()
    for j in order:
        d = torch.dot(g, grads[j])
        if d < 0:
            g = g - d / torch.dot(grads[j], grads[j]) * grads[j]
    return g


def test_pcgrad_two_conflicting_by_hand():
    # g1.g2 = -1 < 0:
    #   g1' = g1 - (-1)/||g2||^2 g2 = (1, 0) + (-1, 1)/2 = (0.5, 0.5)
    #   g2' = g2 - (-1)/||g1||^2 g1 = (-1, 1) + (1, 0)   = (0, 1)
    # sum = (0.5, 1.5)
    for dtype in (torch.float32, torch.float64):
        grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype)
        out = pcgrad(grads, seeded(0))
        assert out.dtype == dtype
        torch.testing.assert_close(out, torch.tensor([0.5, 1.5], dtype=dtype), rtol=0, atol=1e-6)


def test_pcgrad_non_conflicting_is_plain_sum():
    grads = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # dot = 1 > 0
    assert torch.equal(pcgrad(grads, seeded(0)), grads.sum(0))
    # orthogonal gradients (dot == 0) do not conflict either
    eye = torch.eye(4)
    assert torch.equal(pcgrad(eye, seeded(0)), eye.sum(0))


def test_pcgrad_all_pairwise_non_conflicting_is_exact_sum():
    grads = torch.rand(7, 30, generator=seeded(1)) + 0.01  # all entries > 0: every dot > 0
    assert torch.equal(pcgrad(grads, seeded(2)), grads.sum(0))


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_matches_naive_loop(seed):
    grads64 = torch.randn(6, 50, generator=seeded(100 + seed), dtype=torch.float64)
    if seed == 4:
        grads64[2] = 0.0  # a zero gradient is skipped as a projection target
    for grads, rtol in ((grads64, 1e-10), (grads64.float(), 1e-5)):
        gen_a, gen_b = seeded(seed), seeded(seed)
        out = pcgrad(grads, gen_a)
        ref = naive_pcgrad(grads, gen_b)
        torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * ref.norm().item())
        # both consumed the generator identically
        assert torch.equal(torch.rand(3, generator=gen_a), torch.rand(3, generator=gen_b))


def test_pcgrad_at_many_tasks_is_the_direct_loop():
    """80 tasks on 40 dimensions (many conflicts per visit; one zero task): the compiled
    coefficient-space loop equals the direct algorithm on the gradients."""
    grads = torch.randn(80, 40, generator=seeded(7), dtype=torch.float64)
    grads[5] = 0.0
    out = pcgrad(grads, seeded(3))
    ref = naive_pcgrad(grads, seeded(3))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10 * ref.norm().item())


def test_pcgrad_is_a_sum_not_a_mean():
    grads = torch.randn(5, 20, generator=seeded(7), dtype=torch.float64)
    out = pcgrad(grads, seeded(0))
    ref = naive_pcgrad(grads, seeded(0))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, ref / 5)


def test_pcgrad_fresh_random_order_per_task():
    # three tasks where every task's projection depends on its visiting order
    grads = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [-0.5, -2.0]], dtype=torch.float64)
    per_task = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        outcomes = [project_in_order(grads, i, order) for order in itertools.permutations(others)]
        assert not torch.allclose(outcomes[0], outcomes[1])  # the order matters for every task
        per_task.append(outcomes)
    possible = [sum(choice) for choice in itertools.product(*per_task)]  # 8 distinct sums
    seen = set()
    for seed in range(40):
        out = pcgrad(grads, seeded(seed))
        hits = [k for k, p in enumerate(possible) if torch.allclose(out, p, rtol=0, atol=1e-12)]
        assert len(hits) == 1
        seen.add(hits[0])
    # every combination of per-task orders occurs: orders are drawn independently per task
    assert seen == set(range(8))
    # different seeds give different outputs, the same seed the same output
    assert len({tuple(pcgrad(grads, seeded(s)).tolist()) for s in range(5)}) > 1
    assert torch.equal(pcgrad(grads, seeded(5)), pcgrad(grads, seeded(5)))


def test_pcgrad_shapes():
    grads = torch.randn(3, 4, 5, generator=seeded(3))
    out = pcgrad(grads, seeded(0))
    assert out.shape == (4, 5)
    ref = naive_pcgrad(grads.reshape(3, -1).double(), seeded(0)).reshape(4, 5).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    single = torch.randn(1, 6, generator=seeded(4))
    assert torch.equal(pcgrad(single), single[0])

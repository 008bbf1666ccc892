"""Every registered combiner under DistributedDataParallel equals one process.

Two gloo processes on the CPU (started ONCE for the module) each hold half of every batch and
run every registered combiner, at every level it has, for a few optimizer steps; the test
process runs the same steps on the whole batches in one process. The parameters after the
steps agree to float32 rounding, on both ranks, for the stock linear heads with per-column
losses (the one-pass paths, the closed-form head gradients) and for non-linear heads (the
general autograd paths). Also: the process start-up is paid once, the refusal of a combiner
that declares no communication, and the traffic that the representation-level scheme sends.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mtbench.combiners import COMBINERS, Combiner, GramWeighted, Step
from mtbench.combiners.distributed import Traffic, check_ddp
from mtbench.combiners.graddrop import GradDrop
from mtbench.combiners.gradnorm import GradNorm
from mtbench.combiners.gradpenalty import GradPenalty
from mtbench.errors import MtbenchError
from mtbench.models import LinearHeads, MultiTaskModel

T, B, D_IN, D_REP, STEPS, WORLD = 3, 8, 4, 6, 3, 2


def cases() -> list[tuple[str, dict]]:
    """Every registered combiner at every level (or comparable switch) it has."""
    out: list[tuple[str, dict]] = []
    for name, cls in COMBINERS.items():
        if issubclass(cls, GramWeighted):
            out += [(name, {"level": "representation"}), (name, {"level": "params"})]
        elif issubclass(cls, GradNorm):
            out += [(name, {"grad_at": "last_shared"}), (name, {"grad_at": "representation"})]
        elif issubclass(cls, GradPenalty):
            out += [(name, {"target": "input"}), (name, {"target": "representation"})]
        elif issubclass(cls, GradDrop):
            out += [
                (name, {"leak": 0.0}),
                (name, {"leak": 0.0, "batch_separated": False}),
                (name, {"leak": 0.2, "renormalize": True}),
            ]
        else:
            out.append((name, {}))
    return out


class MLPHeads(nn.Module):
    """Non-linear heads: the combiners take their general autograd paths."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(D_REP, 7)
        self.out = nn.Linear(7, T)

    def forward(self, rep):
        return self.out(torch.tanh(self.hidden(rep)))


def make_model(heads: str) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    model = MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP)
    if heads == "mlp":
        model.heads = MLPHeads()
    return model


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(B, D_IN, generator=g)
    y = (torch.rand(B, T, generator=g) < 0.5).float()
    return x, y


def train(name: str, options: dict, heads: str, group=None) -> list[torch.Tensor]:
    """STEPS optimizer steps of ``name``; under ``group`` on this rank's half of each batch."""
    model = make_model(heads)
    comb: Combiner = COMBINERS[name](T, **options)
    comb.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen, cpu_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    rows = slice(None)
    if group is not None:
        r, n = dist.get_rank(group), dist.get_world_size(group)
        rows = slice(r * B // n, (r + 1) * B // n)
    for s in range(STEPS):
        x, y = batch(s)
        x, y = x[rows], y[rows]
        x.requires_grad_(comb.needs_input_grad)
        opt.zero_grad(set_to_none=True)
        rep, out = model(x)
        losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
        step = Step(model, x, rep, out, losses, gen, cpu_gen, heads == "linear", group)
        if comb.needs_second_batch:  # (sdmgrad, modo) an independent batch, sliced alike
            x2, y2 = batch(50 + s)
            step.inputs2 = x2[rows]
            step.rep2, step.outputs2 = model(step.inputs2)
            step.losses2 = F.binary_cross_entropy_with_logits(step.outputs2, y2[rows], reduction="none").mean(0)
        comb.backward(step)
        opt.step()
        if hasattr(comb, "end_epoch") and s == 1:
            comb.end_epoch()
    return [p.detach().clone() for p in model.parameters()]


def all_runs(group=None) -> dict[str, list[torch.Tensor]]:
    out = {}
    for heads in ("linear", "mlp"):
        for name, options in cases():
            out[f"{name}{options}-{heads}"] = train(name, options, heads, group)
    return out


def accumulated(group=None) -> list[torch.Tensor]:
    """Two steps' gradients accumulated in ``.grad``: pcgrad at the representation, then clip
    (which clips the accumulated sum, as in one process)."""
    out_grads = []
    for comb in (COMBINERS["pcgrad"](T), COMBINERS["clip"](T, max_norm=0.05)):
        model = make_model("linear")
        gen = torch.Generator().manual_seed(3)
        rows = slice(None)
        if group is not None:
            rows = slice(dist.get_rank() * B // WORLD, (dist.get_rank() + 1) * B // WORLD)
        for s in range(2):
            x, y = batch(s)
            rep, out = model(x[rows])
            losses = F.binary_cross_entropy_with_logits(out, y[rows], reduction="none").mean(0)
            comb.backward(Step(model, x[rows], rep, out, losses, gen, gen, True, group))
        out_grads += [p.grad.clone() for p in model.parameters()]
    return out_grads


def _worker(rank: int, init: str, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        group = dist.group.WORLD
        runs = all_runs(group)
        # the representation-level scheme's traffic on one step of an 8-task-free case (MGDA)
        model = make_model("linear")
        x, y = batch(0)
        rep, out = model(x[rank * B // WORLD : (rank + 1) * B // WORLD])
        losses = F.binary_cross_entropy_with_logits(out, y[: B // WORLD], reduction="none").mean(0)
        with Traffic() as traffic:
            COMBINERS["mgda"](T).backward(Step(model, x, rep, out, losses, None, None, True, group))
        runs["traffic"] = [torch.tensor([traffic.calls, traffic.numbers])]
        runs["accumulated"] = accumulated(group)
        torch.save(runs, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs():
    with tempfile.TemporaryDirectory() as tmp:
        init = "file://" + os.path.join(tmp, "init")
        result = os.path.join(tmp, "runs")
        mp.spawn(_worker, args=(init, result), nprocs=WORLD, join=True)
        yield [torch.load(f"{result}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_runs():
    torch.set_num_threads(1)
    return all_runs()


@pytest.mark.slow
def test_every_combiner_at_every_level_equals_one_process(ddp_runs, single_runs):
    assert len(single_runs) == 2 * len(cases())
    bad = []
    for key, ref in single_runs.items():
        start = make_model("linear" if key.endswith("-linear") else "mlp")
        moved = any(not torch.equal(p, q) for p, q in zip(ref, start.parameters()))
        assert moved, f"{key}: the steps did not change the parameters"
        for rank, runs in enumerate(ddp_runs):
            for p, q in zip(ref, runs[key]):
                if not torch.allclose(p, q, rtol=1e-4, atol=2e-6):
                    bad.append(f"{key} rank {rank}: max difference {float((p - q).abs().max()):.3g}")
                    break
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_gradients_accumulated_over_steps_are_one_process_s(ddp_runs):
    ref = accumulated()
    for runs in ddp_runs:
        for p, q in zip(ref, runs["accumulated"]):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_ranks_hold_the_same_parameters(ddp_runs):
    for key in ddp_runs[0]:
        for p, q in zip(ddp_runs[0][key], ddp_runs[1][key]):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), key


@pytest.mark.slow
def test_representation_level_traffic_is_the_losses_the_gram_matrix_and_the_gradients(ddp_runs):
    calls, numbers = ddp_runs[0]["traffic"][0].tolist()
    params = sum(p.numel() for p in make_model("linear").parameters())
    # T losses, T x T Gram entries, then every gradient once (one flat buffer)
    assert (calls, numbers) == (3, T + T * T + params)


def test_a_combiner_without_a_declaration_is_refused_in_one_line():
    class Mine(Combiner):
        name = "mine"

        def backward(self, step):
            step.losses.sum().backward()

    with pytest.raises(MtbenchError) as e:
        check_ddp(Mine(T))
    assert "combiner=mine cannot run with trainer.strategy=ddp" in str(e.value)
    assert "\n" not in str(e.value)

    class Subclassed(GramWeighted):  # overriding GramWeighted's backward drops its declaration
        name = "subclassed"

        def backward(self, step):
            step.losses.sum().backward()

    with pytest.raises(MtbenchError, match="Subclassed.backward declares no"):
        check_ddp(Subclassed(T))


def test_every_registered_combiner_declares_its_communication():
    for cls in COMBINERS.values():
        check_ddp(cls(T, **({"leak": 0.0} if "leak" in cls.options else {})))

"""mtbench.nn.GradDrop / RandomGradDrop: the layer's backward is exactly functional.graddrop of
the per-task gradients arriving at its views (computed here independently, one autograd call
per task), on any head, under autocast, compile and DistributedDataParallel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mtbench.nn
from mtbench.combiners.functional import graddrop, random_graddrop

T, B, D = 4, 8, 6


def mlp_heads(seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, 1)) for _ in range(T))


def losses_of(heads: nn.ModuleList, views, y: torch.Tensor) -> list[torch.Tensor]:
    return [
        nn.functional.binary_cross_entropy_with_logits(h(v).squeeze(1), y[:, i])
        for i, (h, v) in enumerate(zip(heads, views))
    ]


def per_task_grads(heads: nn.ModuleList, rep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL_i/dA, one autograd call per task: the independent reference."""
    return torch.stack(
        [torch.autograd.grad(loss, rep, retain_graph=True)[0] for loss in losses_of(heads, [rep] * T, y)]
    )


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, generator=g)
    y = (torch.rand(B, T, generator=g) > 0.5).float()
    return x, y


OPTIONS = [
    {},
    {"leak": 0.3},
    {"leak": [0.0, 0.5, 1.0, 0.25]},
    {"f": "linear", "k": 0.5},
    {"f": "sigmoid", "k": 2.0},
    {"batch_separated": False},
    {"renormalize": True},
]


CASES = [(kind, o) for kind in ("graddrop", "random_graddrop") for o in OPTIONS if kind == "graddrop" or "f" not in o]


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_layer_backward_is_graddrop_of_the_arriving_gradients(kind, options):
    x, y = data()
    torch.manual_seed(5)
    trunk = nn.Linear(3, D)
    heads = mlp_heads()
    layer_cls = mtbench.nn.GradDrop if kind == "graddrop" else mtbench.nn.RandomGradDrop
    layer = layer_cls(**options, generator=torch.Generator().manual_seed(7))
    rep = trunk(x)
    views = layer(rep, T)
    assert len(views) == T and all(torch.equal(v, rep) and v.data_ptr() == rep.data_ptr() for v in views)
    sum(losses_of(heads, views, y)).backward()
    got_trunk = trunk.weight.grad.clone()
    got_heads = [p.grad.clone() for p in heads.parameters()]

    # reference: per-task gradients at the representation, the pure function, the trunk's VJP
    for p in [*trunk.parameters(), *heads.parameters()]:
        p.grad = None
    rep = trunk(x)
    grads = per_task_grads(heads, rep, y)
    fn = graddrop if kind == "graddrop" else random_graddrop
    kw = {k: v for k, v in options.items() if k != "batch_separated"}
    combined = fn(
        grads,
        None if options.get("batch_separated") is False else rep.detach(),
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    torch.autograd.backward(rep, combined)
    assert torch.equal(got_trunk, trunk.weight.grad)
    # each head's parameters get their own loss's plain gradient
    sum(losses_of(heads, [rep.detach()] * T, y)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(got_heads, heads.parameters()))


def test_a_view_no_loss_uses_is_a_zero_gradient():
    x, y = data()
    trunk = nn.Linear(3, D)
    heads = mlp_heads()
    rep = trunk(x)
    views = mtbench.nn.GradDrop(generator=torch.Generator().manual_seed(3))(rep, T)
    sum(losses_of(heads, views, y)[:-1]).backward()  # the last task's view is unused
    got = trunk.weight.grad.clone()
    trunk.weight.grad = None
    rep = trunk(x)
    grads = per_task_grads(heads, rep, y)
    grads[-1].zero_()
    torch.autograd.backward(rep, graddrop(grads, rep.detach(), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(got, trunk.weight.grad)


def test_compile_and_autocast():
    x, y = data()
    trunk = nn.Linear(3, D)
    heads = mlp_heads()
    layer = mtbench.nn.GradDrop(generator=torch.Generator().manual_seed(1))

    def loss(inputs):
        return sum(losses_of(heads, layer(trunk(inputs), T), y))

    loss(x).backward()
    eager = trunk.weight.grad.clone()
    trunk.weight.grad = None
    layer.generator.manual_seed(1)
    torch.compile(loss, backend="eager")(x).backward()
    assert torch.equal(eager, trunk.weight.grad)

    trunk.weight.grad = None
    layer.generator.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total = loss(x)
    total.float().backward()
    assert trunk.weight.grad.dtype == torch.float32 and torch.isfinite(trunk.weight.grad).all()
    assert not torch.equal(trunk.weight.grad, torch.zeros_like(trunk.weight.grad))


def test_distributed_data_parallel_replica():
    """One gloo replica: DDP averages over one process, so the gradients equal the plain model's."""
    script = textwrap.dedent(
        """
        import os, torch
        from torch import nn
        import torch.distributed as dist
        import mtbench.nn
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29533"))
        dist.init_process_group("gloo", rank=0, world_size=1)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.trunk = nn.Linear(3, 6)
                self.heads = nn.ModuleList(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(4))
                self.drop = mtbench.nn.GradDrop(generator=torch.Generator().manual_seed(2))
            def forward(self, x):
                views = self.drop(self.trunk(x), len(self.heads))
                return torch.cat([h(v) for h, v in zip(self.heads, views)], 1)

        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
        plain, wrapped = Net(), nn.parallel.DistributedDataParallel(Net())
        for net in (plain, wrapped):
            net(x).pow(2).mean(0).sum().backward()
        a = [p.grad for p in plain.parameters()]
        b = [p.grad for p in wrapped.module.parameters()]
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        dist.destroy_process_group()
        print("ddp ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ddp ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: mtbench.nn.GradDrop(leak=1.5), "leak"),
        (lambda: mtbench.nn.GradDrop(leak=[0.1, -0.1]), "leak"),
        (lambda: mtbench.nn.GradDrop(leak="x"), "leak"),
        (lambda: mtbench.nn.GradDrop(f="tanh"), "f must be"),
        (lambda: mtbench.nn.GradDrop(k=float("nan")), "k must be"),
        (lambda: mtbench.nn.RandomGradDrop(eps=-1), "eps must be"),
        (lambda: mtbench.nn.GradDrop(batch_separated=1), "batch_separated"),
        (lambda: mtbench.nn.GradDrop()(torch.randn(4, 3, requires_grad=True), 0), "num_tasks"),
        (lambda: mtbench.nn.GradDrop(leak=[0.1, 0.2])(torch.randn(4, 3, requires_grad=True), 3), "leak has 2 values"),
        (lambda: mtbench.nn.GradDrop()(torch.randn(4, 3), 3), "does not require grad"),
        (lambda: mtbench.nn.GradDrop()(torch.randn(4, requires_grad=True), 3), "batch"),
    ],
)
def test_bad_input_names_the_argument(make, words):
    with pytest.raises(ValueError) as excinfo:
        make()
    message = str(excinfo.value)
    assert words in message and "\n" not in message


def test_the_resnet_example_trains(tmp_path):
    """examples/resnet_graddrop.py (shown on the docs page) runs as written, a few steps."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "resnet_graddrop.py"
    proc = subprocess.run([sys.executable, str(script), "--steps", "2", "--image-size", "32", "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("step ")]
    assert len(lines) == 2 and "step 2/2: mean task loss" in lines[-1]

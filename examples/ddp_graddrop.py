"""mtbench under your own DistributedDataParallel loop, on the CPU (gloo), two processes:

* ``mtbench.nn.GradDrop`` as a layer of a model wrapped in ``DistributedDataParallel`` (DDP
  averages the gradients; the layer sums GradDrop's batch statistics over its own group);
* ``mtbench.backward(losses, rep, combiner, process_group=...)`` on a model whose DDP gradient
  sync is off for the step (``no_sync``): the combiner sends what it needs and sums the
  gradients itself.

Each rank trains on its half of every batch; then rank 0 trains the same models on the whole
batches in one process and prints the largest difference of the parameters (float32 rounding).

    python examples/ddp_graddrop.py --steps 3 --combiner pcgrad
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mtbench
import mtbench.nn

TASKS, BATCH, FEATURES, WORLD = 4, 16, 10, 2


class Net(nn.Module):
    def __init__(self, graddrop: mtbench.nn.GradDrop | None = None):
        super().__init__()
        torch.manual_seed(0)  # the same start on every rank and in the one-process run
        self.trunk = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1)) for _ in range(TASKS))
        self.graddrop = graddrop

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.trunk(x)
        views = self.graddrop(rep, TASKS) if self.graddrop is not None else [rep] * TASKS
        return rep, torch.cat([head(v) for head, v in zip(self.heads, views)], dim=1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, FEATURES, generator=g), (torch.rand(BATCH, TASKS, generator=g) < 0.5).float()


def task_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0)  # [T], means over the batch


def train(args: argparse.Namespace, group=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both models after ``args.steps`` steps; under ``group`` on this rank's rows."""
    rows = slice(None)
    if group is not None:
        r, n = dist.get_rank(), dist.get_world_size()
        rows = slice(r * BATCH // n, (r + 1) * BATCH // n)

    # 1. GradDrop as a layer inside a DDP model
    own = dist.new_group(backend="gloo") if group is not None else None  # the layer's collectives apart from DDP's
    layer = mtbench.nn.GradDrop(leak=0.0, generator=torch.Generator().manual_seed(1), process_group=own)
    net = Net(layer)
    model = DistributedDataParallel(net) if group is not None else net
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in range(args.steps):
        x, y = batch(s)
        opt.zero_grad()
        _, logits = model(x[rows])
        task_losses(logits, y[rows]).sum().backward()  # DDP averages the gradients
        opt.step()
    with_layer = [p.detach().clone() for p in net.parameters()]

    # 2. mtbench.backward with process_group; the model's own gradient sync off for the step
    combiner = mtbench.combiners.COMBINERS[args.combiner](TASKS)
    net = Net()
    model = DistributedDataParallel(net) if group is not None else net
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(2)  # seeded alike on every rank
    for s in range(args.steps):
        x, y = batch(s)
        opt.zero_grad()
        with model.no_sync() if group is not None else torch.enable_grad():
            rep, logits = model(x[rows])
            mtbench.backward(task_losses(logits, y[rows]), rep, combiner, generator=gen, process_group=group)
        opt.step()
    with_backward = [p.detach().clone() for p in net.parameters()]
    return with_layer, with_backward


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


def worker(rank: int, init: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        layer, backward = train(args, dist.group.WORLD)
        if rank == 0:
            one_layer, one_backward = train(args)
            print(
                f"GradDrop layer in a DDP model vs one process: largest difference {largest_difference(layer, one_layer):.2e}"
            )
            print(
                f"mtbench.backward({args.combiner!r}, process_group) vs one process: "
                f"largest difference {largest_difference(backward, one_backward):.2e}"
            )
            start = [p.detach() for p in Net().parameters()]
            print(f"(the steps moved the parameters by up to {largest_difference(one_layer, start):.2e})")
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description="mtbench's GradDrop layer and mtbench.backward under DDP on the CPU")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--combiner", default="pcgrad", help="a registered combiner for mtbench.backward")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=("file://" + os.path.join(tmp, "init"), args), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()

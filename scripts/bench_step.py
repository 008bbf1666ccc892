#!/usr/bin/env python
"""Time one full training step (forward, combiner, optimizer step) of every combiner against
the sum-of-losses baseline, interleaved in one process.

    python scripts/bench_step.py                                  # the CelebA-shaped problem, every row
    python scripts/bench_step.py --combiners graddrop,pcgrad@params --steps 10
    python scripts/bench_step.py model=small_cnn --num-tasks 40 --image-size 32
    python scripts/bench_step.py task=shapes40 model=small_cnn    # a real task's batches
    python scripts/bench_step.py trainer.device=cuda              # synchronised timing on a GPU
    python scripts/bench_step.py task=nyuv2                       # NYUv2-shaped, the SegNet trunk, batch 2

Positional arguments are Hydra overrides of the mtbench config (``model=...``,
``combiner.level=...``, ``trainer.device=...``, ``trainer.num_threads=...``, ``task=...``).

The default problem is CelebA-shaped on random tensors: a ResNet-18 trunk (torchvision's
stem, ``model.small_input=false``) on 64x64 RGB inputs, batch 64, 40 binary attributes read by
40 linear heads, per-attribute binary cross-entropy (mean over the batch), Adam. With a
``task=...`` override the task's own model heads, losses and training batches are used.

``task=nyuv2`` (or ``task=cityscapes``) is a dense problem on random tensors of the task's
shape, not its data: NYUv2 3x288x384 inputs with 13-class segmentation, depth and normals
(Cityscapes 3x128x256, 7 classes, depth), batch 2 (``--batch-size``), the SegNet trunk
(``model=segnet``, another dense model with ``model=...``) built by ``mtbench.models.build_model``
from the task's dict head spec; the losses are the tasks' (cross-entropy ignoring -1, L1 over
valid depth, 1 - cosine over valid normals). ``--dense-size HxW`` shrinks the inputs (tests).

Each row has its own copy of the same initial model, its own optimizer and combiner. Every
round runs one step of each row (the order rotates each round); the first ``--warmup`` rounds
are not timed. Rows at the parameter level (``@params``: T backward passes per step) run
``--slow-steps`` timed steps in rounds spread over the run. A row's time is the median of its
timed steps; its speed vs baseline is the baseline's median over the same rounds divided by
it. Peak memory is measured apart, in one more step of each row after the timing: the
step's peak growth above the memory held before it (CUDA's ``max_memory_allocated`` on a GPU;
on a Linux CPU the peak resident set, VmHWM, with glibc's mmap threshold fixed at 64 KiB so
that the resident set follows the live buffers).

``--heads mlp`` replaces the 40 linear heads by 40 two-layer heads (``--head-hidden`` units,
ReLU): every combiner then takes the per-task gradients through the heads by batched autograd
calls (no closed form through linear heads).

Rows: ``<combiner>[@<level>]`` for any mtbench combiner (``@representation`` or ``@params``
sets ``combiner.level``); the combiners in a plain loop outside the trainer:
``layer-graddrop`` and ``layer-random_graddrop`` (``mtbench.nn.GradDrop`` between the trunk and
the heads, each head reading its own view, one ``sum(losses).backward()``) and
``backward-<name>`` for ``graddrop``, ``mgda``, ``pcgrad`` (``mtbench.backward(losses, rep, ...)``
at the representation); plus ``torchjd-pcgrad@params`` and ``torchjd-mgda@params``: torchjd's
``mtl_backward`` + ``jac_to_grad`` with its PCGrad / MGDA aggregators, skipped (and said so)
when torchjd is not installed (it is one of mtbench's dependencies, so only a stripped
environment lacks it).

``--ddp N`` (CPU, gloo): N processes, each holding its equal slice of every batch, time the
step of every combiner under DistributedDataParallel (``Step.group``: the combiner sends what it
needs, ``docs/reference/ddp-communication.md``) against the row ``ddp``, the plain sum of the
losses in a model wrapped in ``torch.nn.parallel.DistributedDataParallel`` (its one all-reduce
of the gradients). A step's time is the slowest rank's; each row counts its collectives and
the numbers they carry per step (and that traffic over DDP's: the model's parameter count).
Default rows: every registered combiner at each level.

A row ending in ``+diag`` (``pcgrad@representation+diag``, ``baseline+diag``) is the same
combiner with ``trainer.diagnostics=true``: the per-step statistics of
:mod:`mtbench.train.diagnostics` around its backward pass (the JSON's ``diagnostics_cost`` gives
each such row's step time over the plain row's, from the same rounds).

Writes a JSON file (``--out``, default ``docs/results/bench/<problem>-<device>.json``; with
``--ddp N``: ``<problem>-<device>-ddp<N>.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mtbench.combiners import COMBINERS
from mtbench.combiners.gramweighted import LEVELS
from mtbench.combiners.paramrows import ParamRows

#: the combiners in a plain loop: rows ``layer-<name>`` and ``backward-<name>``
LAYER_ROWS = ("layer-graddrop", "layer-random_graddrop")
BACKWARD_ROWS = ("backward-graddrop", "backward-mgda", "backward-pcgrad")
#: every row, in the order of the table (the registry's order, each level of the combiners that
#: have one, then the torchjd references)
DEFAULT_ROWS = (
    tuple(
        row
        for name, cls in COMBINERS.items()
        for row in ([f"{name}@{lv}" for lv in getattr(cls, "levels", LEVELS)] if "level" in cls.options else [name])
    )
    + LAYER_ROWS
    + BACKWARD_ROWS
    + ("torchjd-pcgrad@params", "torchjd-mgda@params")
)

#: the lowest speed vs baseline each row is designed for, on the CelebA-shaped problem (the
#: table's "floor" column: ✓ at or above it)
FLOORS = {
    "graddrop": 0.95,
    "random_graddrop": 0.95,
    "mgda@representation": 0.90,
    "pcgrad@representation": 0.90,
    "gradnorm": 0.80,
    "clip": 0.97,
    "gradpenalty": 0.40,
    "layer-graddrop": 0.97,
    "layer-random_graddrop": 0.97,
    # the loss-level combiners: scalar arithmetic on [T] vectors, one backward pass
    **{name: 0.98 for name in ("uw", "dwa", "rlw", "gls", "famo")},
}
#: parameter-level rows that must be at least this many times as fast as torchjd's
TORCHJD_FACTOR = 3.0
TORCHJD_ROWS = {"torchjd-pcgrad": "pcgrad", "torchjd-mgda": "mgda"}

#: mtbench config overrides of the default (CelebA-shaped) problem; the user's come after them
PROBLEM_OVERRIDES = ["model=resnet18", "model.small_input=false", "model.weights=null"]

#: the dense problems (``task=<name>``): input (C, H, W) and the head spec's outputs, canonical order
DENSE_SHAPES = {
    "nyuv2": ((3, 288, 384), {"segmentation": 13, "depth": 1, "normal": 3}),
    "cityscapes": ((3, 128, 256), {"segmentation": 7, "depth": 1}),
}
#: the dense problems' model unless the user picks one, and their batch size unless given
DENSE_MODEL, DENSE_BATCH = "segnet", 2


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def compose(overrides: list[str]):
    """The mtbench config (the ``mtbench.configs`` package) with ``overrides`` applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mtbench.configs", version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def parse_rows(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT_ROWS)
    rows = [r.strip() for part in text.split(",") for r in part.split() if r.strip()]
    if "baseline" not in rows:
        rows.insert(0, "baseline")
    return list(dict.fromkeys(rows))


#: the suffix of a row with ``trainer.diagnostics=true``
DIAG = "+diag"


def split_row(row: str) -> tuple[str, str | None]:
    name, _, level = row.removesuffix(DIAG).partition("@")
    return name, (level or None)


# ---------------------------------------------------------------------------------------------
# the problem: model, batches, losses
# ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    name: str
    description: str
    model: torch.nn.Module
    num_tasks: int
    batches: list[tuple[torch.Tensor, Any]]
    losses: Callable[[Any, Any], torch.Tensor]
    default_leak: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: loss i reads output column i only (``Task.column_losses``; the random problem's BCE: yes)
    column_losses: bool = False


def bce_losses(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-attribute binary cross-entropy with logits, each a mean over the batch (as
    ``BinaryAttributeTask.losses``)."""
    return F.binary_cross_entropy_with_logits(outputs, labels.to(outputs.dtype), reduction="none").mean(0)


class MLPHeads(torch.nn.Module):
    """T two-layer heads (Linear, ReLU, Linear to one logit) on the representation, logits
    stacked [B, T]: heads that are not mtbench's stock linear heads."""

    def __init__(self, rep_dim: int, num_tasks: int, hidden: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(rep_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
            for _ in range(num_tasks)
        )

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.from_views([rep] * len(self.heads))

    def from_views(self, views) -> torch.Tensor:
        return torch.cat([h(v.flatten(1)) for h, v in zip(self.heads, views)], dim=1)


def heads_from_views(heads: torch.nn.Module, views) -> torch.Tensor:
    """The logits [B, T] with head i reading view i (``mtbench.nn.GradDrop``'s views): one
    batched product for the stock linear heads, each head on its view for MLP heads."""
    if hasattr(heads, "from_views"):
        return heads.from_views(views)
    linear = heads.linear
    stacked = torch.stack([v.flatten(1) for v in views])  # [T, B, D]
    return torch.einsum("tbd,td->bt", stacked, linear.weight) + linear.bias


class DenseShape:
    """What ``build_model`` reads of a dense task (``head_spec`` a dict of output channels,
    ``dense``), without its data: the bench's random problem of ``task=nyuv2|cityscapes``."""

    dense = True
    in_channels = 3
    default_leak = None
    column_losses = False

    def __init__(self, name: str):
        self.name = name
        self.outputs = dict(DENSE_SHAPES[name][1])
        self.task_names = list(self.outputs)
        self.num_tasks = len(self.outputs)

    def head_spec(self):
        from mtbench.data.base import HeadSpec

        return HeadSpec(outputs=dict(self.outputs))

    def make_heads(self, rep_dim: int):
        return None  # the model's own dense heads, from head_spec()


def dense_losses(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tasks' losses [T], in the outputs' order: segmentation cross-entropy ignoring
    -1, depth L1 over pixels with depth > 0, normals 1 - cosine over pixels with a normal."""
    out = []
    for name, pred in outputs.items():
        target = labels[name]
        if name == "segmentation":
            out.append(F.cross_entropy(pred.float(), target, ignore_index=-1))
        elif name == "depth":
            valid = target > 0
            out.append((pred.float() - target).abs()[valid].mean())
        else:
            valid = target.abs().sum(1) > 0
            cos = F.cosine_similarity(F.normalize(pred.float(), dim=1), target, dim=1)
            out.append((1 - cos)[valid].mean())
    return torch.stack(out)


def dense_batches(name: str, size: tuple[int, int], bs: int, n: int, device: torch.device, seed: int):
    """``n`` random batches shaped as the task's: images, and labels with some pixels missing."""
    (c, _, _), outputs = DENSE_SHAPES[name]
    h, w = size
    gen = torch.Generator().manual_seed(seed + 7)
    data = []
    for _ in range(n):
        x = torch.randn(bs, c, h, w, generator=gen)
        y: dict[str, torch.Tensor] = {}
        for task, ch in outputs.items():
            if task == "segmentation":
                seg = torch.randint(0, ch, (bs, h, w), generator=gen)
                seg[torch.rand(bs, h, w, generator=gen) < 0.1] = -1
                y[task] = seg
            elif task == "depth":
                depth = torch.rand(bs, 1, h, w, generator=gen) * 10
                depth[torch.rand(bs, 1, h, w, generator=gen) < 0.1] = 0
                y[task] = depth
            else:
                normal = F.normalize(torch.randn(bs, 3, h, w, generator=gen), dim=1)
                normal[(torch.rand(bs, h, w, generator=gen) < 0.1).unsqueeze(1).expand_as(normal)] = 0
                y[task] = normal
        data.append((x.to(device), {k: v.to(device) for k, v in y.items()}))
    return data


def build_dense_problem(cfg, args, device: torch.device, name: str) -> Problem:
    """The dense problem of ``task=<name>``: the model built through ``build_model`` by name."""
    from mtbench.errors import MtbenchError
    from mtbench.models import build_model

    torch.manual_seed(int(cfg.seed))
    shape = DenseShape(name)
    (c, h, w), _ = DENSE_SHAPES[name]
    if args.dense_size:
        try:
            h, w = (int(v) for v in args.dense_size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bench_step: --dense-size {args.dense_size!r}: give HxW, e.g. 32x48") from None
    try:
        model = build_model(cfg.model, in_channels=c, task=shape).to(device)
    except (MtbenchError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"bench_step: task={name} needs a dense model; model.name={cfg.model.get('name')!r} could not be built "
            f"({type(e).__name__}: {e}); give model=segnet (or another dense model)"
        ) from None
    bs = int(cfg.trainer.batch_size)
    data = dense_batches(name, (h, w), bs, args.num_batches, device, int(cfg.seed))
    rep, outputs = model(data[0][0])
    x = data[0][0]
    if (
        not isinstance(outputs, dict)
        or list(outputs) != shape.task_names
        or any(tuple(o.shape) != (bs, shape.outputs[k], *x.shape[2:]) for k, o in outputs.items())
    ):
        raise SystemExit(
            f"bench_step: task={name}: model.name={cfg.model.name!r} is not a dense model (its outputs are not a dict "
            f"of {', '.join(shape.task_names)} maps [B, C, H, W] at the input's size); give model=segnet"
        )
    return Problem(
        name=f"{name}_shaped",
        description=(
            f"random tensors shaped as {name}: inputs [{bs}, {c}, {h}, {w}], tasks {', '.join(shape.task_names)}, "
            f"model {cfg.model.name}"
        ),
        model=model,
        num_tasks=shape.num_tasks,
        batches=data,
        losses=dense_losses,
        info={"task": f"{name}_shaped", "input_shape": [bs, c, h, w], "num_tasks": shape.num_tasks},
        column_losses=False,
    )


def build_problem(cfg, args, device: torch.device, user_task: bool, dense: str | None = None) -> Problem:
    from mtbench.models import build_model

    if dense is not None:
        return build_dense_problem(cfg, args, device, dense)

    torch.manual_seed(int(cfg.seed))
    bs = int(cfg.trainer.batch_size)
    if user_task:
        from mtbench.data import build_task
        from mtbench.train.batches import Preprocess, batches

        task = build_task(cfg.task)
        task.setup(device)
        model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(device)
        prep = Preprocess(task, device)
        data: list[tuple[torch.Tensor, Any]] = []
        for images, labels in batches(task.train, bs, torch.Generator().manual_seed(int(cfg.seed))):
            if int(images.shape[0]) != bs:
                break
            x, y = prep(images, labels)
            data.append((task.augment(x), y))
            if len(data) == args.num_batches:
                break
        shape = tuple(data[0][0].shape)
        return Problem(
            name=task.name,
            description=f"task {task.name}: {task.num_tasks} tasks, inputs {list(shape)}, model {cfg.model.name}",
            model=model,
            num_tasks=task.num_tasks,
            batches=data,
            losses=task.losses,
            default_leak=task.default_leak,
            info={"task": task.name, "input_shape": list(shape)},
            column_losses=task.column_losses,
        )
    T, C, S = args.num_tasks, args.channels, args.image_size
    model = build_model(cfg.model, num_tasks=T, in_channels=C)
    if args.heads == "mlp":
        model.heads = MLPHeads(model.rep_dim, T, args.head_hidden)
    model = model.to(device)
    gen = torch.Generator().manual_seed(int(cfg.seed) + 7)
    data = []
    for _ in range(args.num_batches):
        x = torch.randn(bs, C, S, S, generator=gen).to(device)
        y = (torch.rand(bs, T, generator=gen) < 0.5).float().to(device)
        data.append((x, y))
    name = "celeba_shaped" if (T, C, S, bs) == (40, 3, 64, 64) and cfg.model.name == "resnet18" else "synthetic"
    if args.heads == "mlp":
        name += "-mlp_heads"
    return Problem(
        name=name,
        description=(
            f"random tensors: {T} binary attributes, inputs [{bs}, {C}, {S}, {S}], model {cfg.model.name}"
            + (f" (small_input={cfg.model.small_input})" if "small_input" in cfg.model else "")
            + (f", {T} two-layer heads ({args.head_hidden} hidden units)" if args.heads == "mlp" else ", linear heads")
        ),
        model=model,
        num_tasks=T,
        batches=data,
        losses=bce_losses,
        info={"task": "random", "input_shape": [bs, C, S, S], "num_tasks": T},
        column_losses=True,
    )


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    row: str
    combiner: str
    level: str | None
    options: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, Any], None]
    slow: bool
    rounds: set[int] = field(default_factory=set)
    times: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    peaks: list[int] = field(default_factory=list)
    error: str | None = None


def combiner_config(row: str, user_overrides: list[str], base: list[str]):
    """The composed config of a row: ``combiner=<name>``, the user's ``combiner.*`` overrides
    that this combiner has, then the row's level."""
    name, level = split_row(row)
    cfg = compose(base + [f"combiner={name}"])
    own = []
    for o in user_overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith("combiner.") and key.split(".")[1] in cfg.combiner:
            if level is not None and key == "combiner.level":
                continue  # the row's own level wins
            own.append(o)
    extra = [f"combiner.level={level}"] if level is not None else []
    if level is not None and "level" not in cfg.combiner:
        raise SystemExit(f"bench_step: combiner={name} has no level option (row {row!r})")
    return compose(base + [f"combiner={name}"] + own + extra)


def make_row(row: str, cfg_row, problem: Problem, device: torch.device, comb_gens, slow: bool) -> Row:
    from omegaconf import OmegaConf

    from mtbench.combiners import build_combiner
    from mtbench.train.device import amp_dtype
    from mtbench.train.optim import build_optimizer
    from mtbench.train.step import TrainStep

    model = copy.deepcopy(problem.model)
    optimizer = build_optimizer(model.parameters(), cfg_row.trainer)
    combiner = build_combiner(cfg_row.combiner, problem.num_tasks, default_leak=problem.default_leak)
    gen, cpu_gen = comb_gens()
    options = OmegaConf.to_container(cfg_row.combiner, resolve=True)
    options.pop("_target_", None)
    name = options.pop("name")
    # the trainer's own step: forward (autocast under trainer.amp), combiner.backward, optimizer step
    amp = amp_dtype(cfg_row.trainer)
    step = TrainStep(model, combiner, optimizer, problem.losses, device, amp, gen, cpu_gen, problem.column_losses)
    if row.endswith(DIAG):  # trainer.diagnostics=true: the trainer's per-step statistics
        from mtbench.train.diagnostics import Diagnostics

        names = [str(i) for i in range(problem.num_tasks)]
        step.diagnostics = Diagnostics(combiner, names, getattr(model, "shared_representation", True))
        name += DIAG
    return Row(row, name, options.get("level"), options, model, optimizer, step, slow)


def make_own_loop_row(row: str, cfg, problem: Problem, device: torch.device, comb_gens) -> Row:
    """A plain PyTorch step outside the trainer: ``mtbench.nn.GradDrop`` between the trunk and
    the heads (``layer-*``), or ``mtbench.backward`` at the representation (``backward-*``)."""
    import mtbench
    import mtbench.nn
    from mtbench.combiners import COMBINERS
    from mtbench.train.device import amp_dtype, autocast
    from mtbench.train.optim import build_optimizer

    kind, _, name = row.partition("-")
    model = copy.deepcopy(problem.model)
    optimizer = build_optimizer(model.parameters(), cfg.trainer)
    amp = amp_dtype(cfg.trainer)
    gen, cpu_gen = comb_gens()
    T = problem.num_tasks
    losses_fn = problem.losses
    if kind == "layer":
        layer = (mtbench.nn.GradDrop if name == "graddrop" else mtbench.nn.RandomGradDrop)(generator=gen)

        def step(x: torch.Tensor, y: Any) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                views = layer(model.trunk(x), T)
                losses = losses_fn(heads_from_views(model.heads, views), y)
            losses.sum().backward()
            optimizer.step()

        options: dict[str, Any] = {"leak": 0.0}
    else:
        combiner = COMBINERS[name](T, **({"level": "representation"} if "level" in COMBINERS[name].options else {}))

        def step(x: torch.Tensor, y: Any) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                rep = model.trunk(x)
                losses = losses_fn(model.heads(rep), y)
            mtbench.backward(losses, rep, combiner, generator=gen, cpu_generator=cpu_gen)
            optimizer.step()

        options = dict(combiner.opts)
    return Row(
        row,
        row,
        "representation" if kind == "backward" and "level" in options else None,
        options,
        model,
        optimizer,
        step,
        slow=False,
    )


def make_torchjd_row(row: str, cfg, problem: Problem, torchjd_mod) -> Row:
    from torchjd.aggregation import MGDA, PCGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    from mtbench.train.optim import build_optimizer

    name, _ = split_row(row)
    aggregator = {"torchjd-pcgrad": PCGrad, "torchjd-mgda": MGDA}[name]()
    model = copy.deepcopy(problem.model)
    optimizer = build_optimizer(model.parameters(), cfg.trainer)
    shared = [p for p in model.trunk.parameters() if p.requires_grad]
    losses_fn = problem.losses

    from mtbench.train.device import amp_dtype, autocast

    amp = amp_dtype(cfg.trainer)
    device = next(model.parameters()).device

    def step(x: torch.Tensor, y: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            rep, outputs = model(x)
            losses = losses_fn(outputs, y)
        # the heads are one [T, D] matrix shared by the task graphs: keep the graph between tasks
        mtl_backward(list(losses.unbind()), features=rep, retain_graph=True)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    step.needs_input_grad = False  # type: ignore[attr-defined]
    opts = {
        "aggregator": type(aggregator).__name__,
        "torchjd": torchjd_mod.__version__ if hasattr(torchjd_mod, "__version__") else "?",
    }
    return Row(row, name, "params", opts, model, optimizer, step, slow=True)


# ---------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------


class Memory:
    """Peak memory growth of one step above what was held before it: CUDA's allocator
    statistics on a GPU; on a Linux CPU the peak resident set (VmHWM, reset through
    /proc/self/clear_refs), with glibc's mmap threshold fixed at 64 KiB and free memory
    trimmed before the step, so that large buffers are mapped and unmapped and the resident
    set follows the live tensors (buffers under 64 KiB are not seen)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind = "CUDA max_memory_allocated growth" if self.cuda else "peak RSS growth (VmHWM)"
        self.ok = True
        self.libc = None
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._status()
                from mtbench.train.device import _M_MMAP_THRESHOLD, _glibc

                self.libc = _glibc()
                if self.libc is None:
                    raise OSError("glibc's mallopt is not available")
                self.libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)  # fixed: no dynamic raising
            except (OSError, KeyError):
                self.ok = False
                self.kind = "unavailable"

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key + ":"] = int(value.split()[0]) * 1024
        return out

    def start(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        if not self.ok:
            return 0
        if self.libc is not None:
            self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self._status()["VmRSS:"]

    def peak(self, before: int) -> int | None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        if not self.ok:
            return None
        return self._status()["VmHWM:"] - before


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def second_batch_of(r: Row, problem: Problem, k: int) -> tuple:
    """A two-batch combiner's row (SDMGrad, MoDo: ``needs_second_batch``): the next batch of the
    cycle as its second batch, so its step processes twice the examples of the others' (compare
    it with ``--batch-size`` doubled for the baseline); other rows: nothing."""
    if not getattr(r.step, "needs_second_batch", False):
        return ()
    return (problem.batches[(k + 1) % len(problem.batches)],)


def spread(k: int, start: int, n: int) -> list[int]:
    """``k`` round numbers spread evenly over rounds ``start .. start + n - 1``."""
    k = max(0, min(k, n))
    return sorted({start + int((i + 0.5) * n / k) for i in range(k)}) if k else []


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides of the mtbench config (model=..., trainer.device=..., combiner.level=...)",
    )
    parser.add_argument(
        "--combiners", default=None, help=f"comma-separated rows <combiner>[@level] (default: {','.join(DEFAULT_ROWS)})"
    )
    parser.add_argument("--steps", type=int, default=15, help="timed steps per row (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--slow-steps", type=int, default=3, help="timed steps of parameter-level rows (default 3)")
    parser.add_argument("--slow-warmup", type=int, default=1, help="untimed steps of parameter-level rows (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (trainer.batch_size; default 64)")
    parser.add_argument("--num-tasks", type=int, default=40, help="tasks of the random problem (default 40)")
    parser.add_argument("--image-size", type=int, default=64, help="input side of the random problem (default 64)")
    parser.add_argument("--channels", type=int, default=3, help="input channels of the random problem (default 3)")
    parser.add_argument(
        "--heads", choices=("linear", "mlp"), default="linear", help="task heads of the random problem (default linear)"
    )
    parser.add_argument("--head-hidden", type=int, default=64, help="hidden units of each MLP head (default 64)")
    parser.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled through (default 4)")
    parser.add_argument(
        "--dense-size", default=None, help="HxW inputs of task=nyuv2|cityscapes instead of the task's (e.g. 32x48)"
    )
    parser.add_argument("--out", default=None, help="JSON output (default docs/results/bench/<problem>-<device>.json)")
    parser.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument(
        "--memory-steps", type=int, default=1, help="steps per row of the memory pass after the timing (default 1)"
    )
    parser.add_argument(
        "--ddp",
        type=int,
        default=0,
        help="N: time every combiner under DistributedDataParallel in N gloo processes on the CPU (vs DDP's baseline)",
    )
    args = parser.parse_intermixed_args(argv)

    user = list(args.overrides)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in user]
    if args.combiners is None and "combiner" in keys:  # combiner=a,b reads as --combiners a,b
        args.combiners = user[keys.index("combiner")].split("=", 1)[1]
    # task=nyuv2|cityscapes: the random dense problem of that shape (the task's data is not read)
    dense = None
    if "task" in keys and user[keys.index("task")].split("=", 1)[1] in DENSE_SHAPES:
        dense = user[keys.index("task")].split("=", 1)[1]
        user, keys = [o for o, k in zip(user, keys) if k != "task"], [k for k in keys if k != "task"]
    # the CelebA-shaped problem's model (the dense problems': SegNet) unless the user picks one
    if dense is not None:
        base = [] if "model" in keys else [f"model={DENSE_MODEL}"]
    else:
        base = [] if "model" in keys else list(PROBLEM_OVERRIDES)
    base += [o for o, k in zip(user, keys) if not (k == "combiner" or k.startswith("combiner."))]
    if args.batch_size is not None:
        base.append(f"trainer.batch_size={args.batch_size}")
    elif dense is not None:
        base.append(f"trainer.batch_size={DENSE_BATCH}")
    user_task = "task" in keys
    try:
        cfg = compose(base)
    except Exception as e:  # noqa: BLE001 - Hydra's errors for a missing config group option vary
        if dense is None:
            raise
        model = next((o.split("=", 1)[1] for o in base if o.startswith("model=")), "?")
        raise SystemExit(
            f"bench_step: task={dense} needs a dense model; model={model} is not registered here, or an override "
            f"does not apply ({type(e).__name__}: {str(e).splitlines()[0]}); give model=segnet (or another dense model)"
        ) from None

    from mtbench.train.device import channels_last, resolve_device, retain_freed_memory

    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    retain_freed_memory(bool(cfg.trainer.get("retain_freed_memory", True)))  # as the training loop
    device = resolve_device(cfg.trainer.device)
    problem = build_problem(cfg, args, device, user_task, dense)
    if cfg.trainer.get("channels_last", False):  # as the training loop: NHWC model and batches
        problem.model = channels_last(problem.model)
        problem.batches = [(channels_last(x), y) for x, y in problem.batches]

    if args.ddp:
        return run_ddp(args, cfg, user, base, user_task, dense, argv)

    try:
        import torchjd
    except ImportError:
        torchjd = None

    seed = int(cfg.seed)

    def comb_gens():
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        cpu_gen = torch.Generator().manual_seed(seed + 2) if device.type != "cpu" else gen
        return gen, cpu_gen

    rows: list[Row] = []
    skipped: list[dict[str, str]] = []
    for spec in parse_rows(args.combiners):
        name, level = split_row(spec)
        if spec in LAYER_ROWS or spec in BACKWARD_ROWS:
            rows.append(make_own_loop_row(spec, cfg, problem, device, comb_gens))
            continue
        if name in TORCHJD_ROWS:
            if torchjd is None:
                msg = "torchjd is not installed (pip install torchjd into the benchmark's environment): row skipped"
                print(f"bench_step: {spec}: {msg}", file=sys.stderr)
                skipped.append({"row": spec, "reason": msg})
                continue
            rows.append(make_torchjd_row(spec, cfg, problem, torchjd))
            continue
        cfg_row = combiner_config(spec, user, base)
        # T backward passes per step: at level=params, or always (the per-parameter methods)
        slow = cfg_row.combiner.get("level") == "params" or issubclass(
            COMBINERS.get(cfg_row.combiner.name, object), ParamRows
        )
        rows.append(make_row(spec, cfg_row, problem, device, comb_gens, slow=slow))
    del problem.model

    total = args.warmup + args.steps
    for r in rows:
        if r.slow:
            warm = list(range(min(args.slow_warmup, args.warmup)))
            r.rounds = set(warm) | set(spread(args.slow_steps, args.warmup, args.steps))
        else:
            r.rounds = set(range(total))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if device.type == "cpu" and load > 0.5:
        print(
            f"bench_step: warning: load average {load:.2f} before the run: other processes use the CPU, timings will be noisy",
            file=sys.stderr,
        )
    print(
        f"bench_step: {problem.description}; device {device}, {torch.get_num_threads()} threads; "
        f"{len(rows)} rows, {args.warmup} warm-up + {args.steps} timed rounds ({args.slow_steps} for @params rows)",
        file=sys.stderr,
    )
    started = time.perf_counter()
    for rnd in range(total):
        active = [r for r in rows if rnd in r.rounds]
        shift = rnd % len(active) if active else 0
        for r in active[shift:] + active[:shift]:
            if r.error:
                continue
            x, y = problem.batches[rnd % len(problem.batches)]
            if getattr(r.step, "needs_input_grad", False):
                x = x.detach().clone().requires_grad_(True)
            more = second_batch_of(r, problem, rnd)
            gc.collect()
            sync(device)
            c0 = time.process_time()
            t0 = time.perf_counter()
            try:
                r.step(x, y, *more)
                sync(device)
            except Exception as e:  # a row that cannot run is reported, the others go on
                r.error = f"{type(e).__name__}: {e}"
                print(f"bench_step: {r.row} failed: {r.error}", file=sys.stderr)
                continue
            dt = time.perf_counter() - t0
            dc = time.process_time() - c0
            if rnd >= args.warmup:
                r.times[rnd] = dt
                r.cpu[rnd] = dc
        print(f"bench_step: round {rnd + 1}/{total} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    # memory: one more step of each row, apart from the timing (the allocator setting it needs
    # would change the timings)
    memory = Memory(device) if not args.no_memory else None
    if memory is not None and memory.ok:
        for k in range(args.memory_steps):
            for r in rows:
                if r.error:
                    continue
                x, y = problem.batches[k % len(problem.batches)]
                if getattr(r.step, "needs_input_grad", False):
                    x = x.detach().clone().requires_grad_(True)
                more = second_batch_of(r, problem, k)
                gc.collect()
                before = memory.start()
                try:
                    r.step(x, y, *more)
                except Exception as e:
                    r.error = f"{type(e).__name__}: {e}"
                    continue
                peak = memory.peak(before)
                if peak is not None:
                    r.peaks.append(peak)
        print(f"bench_step: memory measured ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    base_row = next(r for r in rows if r.row == "baseline")
    results = []
    for r in rows:
        ms = statistics.median(r.times.values()) * 1000 if r.times else None
        paired = [base_row.times[k] for k in r.times if k in base_row.times]
        base_ms = statistics.median(paired) * 1000 if paired else None
        speed = base_ms / ms if (ms and base_ms) else None
        ratios = [base_row.times[k] / r.times[k] for k in r.times if k in base_row.times]
        results.append(
            {
                "row": r.row,
                "combiner": r.combiner,
                "level": r.level,
                "options": r.options,
                "ms_per_step": ms,
                "baseline_ms_same_rounds": base_ms,
                "speed_vs_baseline": speed,
                "speed_paired_median": statistics.median(ratios) if ratios else None,
                "steps": len(r.times),
                "step_ms": [round(r.times[k] * 1000, 2) for k in sorted(r.times)],
                "cpu_ms_per_step": statistics.median(r.cpu.values()) * 1000 if r.cpu else None,
                "peak_memory_mib": (max(r.peaks) / 2**20) if r.peaks else None,
                "error": r.error,
            }
        )
    by_row = {x["row"]: x for x in results}
    for x in results:
        name, _ = split_row(x["row"])
        if x["row"].endswith(DIAG):  # the cost of the diagnostics: this row's time over the plain row's
            plain = by_row.get(x["row"].removesuffix(DIAG))
            mine, other = _rows_by_name(rows, x["row"]), _rows_by_name(rows, x["row"].removesuffix(DIAG))
            if plain and mine is not None and other is not None:
                ratios = [mine.times[k] / other.times[k] for k in mine.times if k in other.times]
                x["diagnostics_cost"] = statistics.median(ratios) if ratios else None
            continue
        if x["row"] in FLOORS:
            key = x["row"]
        else:
            key = name if name in COMBINERS and "level" not in COMBINERS[name].options else f"{name}@{x['level']}"
        x["floor"] = FLOORS.get(key)
        if x["floor"] is not None and x["speed_vs_baseline"] is not None:
            x["meets_floor"] = x["speed_vs_baseline"] >= x["floor"]
        if x["level"] == "params" and name in ("pcgrad", "mgda"):
            ref = by_row.get(f"torchjd-{name}@params")
            if ref and ref["speed_vs_baseline"] and x["speed_vs_baseline"]:
                x["vs_torchjd"] = x["speed_vs_baseline"] / ref["speed_vs_baseline"]
                x["floor_vs_torchjd"] = TORCHJD_FACTOR
                x["meets_floor"] = x["vs_torchjd"] >= TORCHJD_FACTOR

    report = {
        "problem": {
            "name": problem.name,
            "description": problem.description,
            **problem.info,
            "batch_size": int(cfg.trainer.batch_size),
            "model": dict(cfg.model),
            "optimizer": str(cfg.trainer.optimizer),
            "amp": str(cfg.trainer.get("amp", False)),
            "channels_last": bool(cfg.trainer.get("channels_last", False)),
        },
        "machine": machine_info(device),
        "command": " ".join(["python", "scripts/bench_step.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "protocol": {
            "warmup_rounds": args.warmup,
            "timed_rounds": args.steps,
            "slow_steps": args.slow_steps,
            "slow_warmup": args.slow_warmup,
            "time": "median of the timed steps (forward, combiner, optimizer step; synchronised on a GPU)",
            "speed_vs_baseline": "baseline median over the rounds the row ran in / the row's median",
            "speed_paired_median": "median over those rounds of baseline time / row time in the same round",
            "peak_memory": (memory.kind if memory.ok else "unavailable") if memory is not None else "not measured",
            "memory_steps": args.memory_steps if memory is not None else 0,
        },
        "torchjd": getattr(torchjd, "__version__", "installed") if torchjd is not None else None,
        "skipped": skipped,
        "rows": results,
        "wall_s": time.perf_counter() - started,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parents[1] / "docs" / "results" / "bench" / f"{problem.name}-{device.type}.json"
    )
    from mtbench.files import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2, default=str) + "\n")
    table = markdown_table(report)
    print(table)
    print(f"bench_step: wrote {out}", file=sys.stderr)
    return report


def _rows_by_name(rows: list[Row], name: str) -> Row | None:
    return next((r for r in rows if r.row == name), None)


# ---------------------------------------------------------------------------------------------
# --ddp N: every combiner under DistributedDataParallel, against DDP's baseline
# ---------------------------------------------------------------------------------------------


def ddp_rows(text: str | None) -> list[str]:
    """``ddp`` (DDP's own baseline) first, then the rows asked for (default: every registered
    combiner at each level; the plain-loop and torchjd rows have no DDP form here)."""
    if text:
        rows = [r.strip() for part in text.split(",") for r in part.split() if r.strip()]
    else:
        rows = [r for r in DEFAULT_ROWS if r not in LAYER_ROWS + BACKWARD_ROWS and not r.startswith("torchjd-")]
    return ["ddp"] + [r for r in dict.fromkeys(rows) if r != "ddp"]


def _rank_rows(value: Any, rank: int, world: int) -> Any:
    """This rank's equal slice of a batch (a tensor, or a dict of tensors, batch first)."""
    if isinstance(value, dict):
        return {k: _rank_rows(v, rank, world) for k, v in value.items()}
    n = value.shape[0] // world
    return value[rank * n : (rank + 1) * n]


def _ddp_worker(
    rank: int, world: int, init: str, args: Any, cfg: Any, user: list[str], base: list[str], ctx: dict
) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mtbench.combiners import Step, build_combiner
    from mtbench.combiners.distributed import Traffic, check_ddp
    from mtbench.train.optim import build_optimizer

    torch.set_num_threads(int(cfg.trainer.num_threads or 1))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = dist.group.WORLD
    device = torch.device("cpu")
    problem = build_problem(cfg, args, device, ctx["user_task"], ctx["dense"])
    seed = int(cfg.seed)
    params = sum(p.numel() for p in problem.model.parameters() if p.requires_grad)
    rows: list[dict[str, Any]] = []
    for spec in ddp_rows(args.combiners):
        model = copy.deepcopy(problem.model)
        gen = torch.Generator().manual_seed(seed + 1)
        if spec == "ddp":
            wrapped = DistributedDataParallel(model)
            optimizer = build_optimizer(wrapped.parameters(), cfg.trainer)

            def step(x, y, wrapped=wrapped, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                _, outputs = wrapped(x)
                problem.losses(outputs, y).sum().backward()  # DDP averages the gradients
                optimizer.step()
                return None

            rows.append({"row": spec, "combiner": "ddp", "level": None, "step": step, "needs_input_grad": False})
            continue
        cfg_row = combiner_config(spec, user, base)
        combiner = build_combiner(cfg_row.combiner, problem.num_tasks, default_leak=problem.default_leak)
        check_ddp(combiner)
        combiner.prepare(model)
        optimizer = build_optimizer(model.parameters(), cfg_row.trainer)

        def step(x, y, model=model, combiner=combiner, optimizer=optimizer, gen=gen):
            optimizer.zero_grad(set_to_none=True)
            rep, outputs = model(x)
            losses = problem.losses(outputs, y)
            with Traffic() as traffic:
                combiner.backward(Step(model, x, rep, outputs, losses, gen, gen, problem.column_losses, group))
            optimizer.step()
            return traffic

        level = cfg_row.combiner.get("level")
        rows.append(
            {
                "row": spec,
                "combiner": combiner.name,
                "level": level,
                "step": step,
                "needs_input_grad": combiner.needs_input_grad,
            }
        )
    del problem.model
    total = args.warmup + args.steps
    times: dict[str, list[float]] = {r["row"]: [] for r in rows}
    traffic: dict[str, tuple[int, int, int]] = {}
    for rnd in range(total):
        shift = rnd % len(rows)
        for r in rows[shift:] + rows[:shift]:
            x, y = problem.batches[rnd % len(problem.batches)]
            x, y = _rank_rows(x, rank, world), _rank_rows(y, rank, world)
            if r["needs_input_grad"]:
                x = x.detach().clone().requires_grad_(True)
            dist.barrier()
            t0 = time.perf_counter()
            sent = r["step"](x, y)
            dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the step takes as long as its slowest rank
            if rnd >= args.warmup:
                times[r["row"]].append(float(dt))
            if sent is not None:
                traffic[r["row"]] = (sent.calls, sent.numbers, sent.bytes)
    if rank == 0:
        torch.save(
            {
                "times": times,
                "traffic": traffic,
                "params": params,
                "name": problem.name,
                "description": problem.description,
            },
            ctx["result"],
        )
    dist.destroy_process_group()


def run_ddp(args: Any, cfg: Any, user: list[str], base: list[str], user_task: bool, dense: str | None, argv) -> dict:
    """``--ddp N``: the rows in N gloo processes (``_ddp_worker``), the report written by this one."""
    import tempfile

    import torch.multiprocessing as mp

    if str(cfg.trainer.device) not in ("cpu", "auto") or args.ddp < 2:
        raise SystemExit("bench_step: --ddp N needs N >= 2 and trainer.device=cpu (gloo processes on the CPU)")
    world = int(args.ddp)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"user_task": user_task, "dense": dense, "result": os.path.join(tmp, "result.pt")}
        init = "file://" + os.path.join(tmp, "init")
        print(f"bench_step: {world} gloo processes, {len(ddp_rows(args.combiners))} rows", file=sys.stderr)
        mp.spawn(_ddp_worker, args=(world, init, args, cfg, user, base, ctx), nprocs=world, join=True)
        got = torch.load(ctx["result"], weights_only=True)
    params = int(got["params"])
    base_ms = statistics.median(got["times"]["ddp"]) * 1000
    results = []
    for row, ts in got["times"].items():
        name, level = split_row(row)
        ms = statistics.median(ts) * 1000
        calls, numbers, nbytes = got["traffic"].get(row, (None, params, None))
        results.append(
            {
                "row": row,
                "combiner": name,
                "level": level or (COMBINERS[name].defaults.get("level") if name in COMBINERS else None),
                "ms_per_step": ms,
                "speed_vs_ddp": base_ms / ms,
                "step_ms": [round(t * 1000, 2) for t in ts],
                "collectives_per_step": calls,
                "numbers_per_step": numbers,
                "bytes_per_step": nbytes,
                "traffic_vs_ddp": numbers / params,
            }
        )
    report = {
        "problem": {
            "description": got["description"],
            "batch_size": int(cfg.trainer.batch_size),
            "model": dict(cfg.model),
        },
        "ddp": {"processes": world, "backend": "gloo", "parameters": params},
        "machine": machine_info(torch.device("cpu")),
        "command": " ".join(["python", "scripts/bench_step.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "protocol": {
            "warmup_rounds": args.warmup,
            "timed_rounds": args.steps,
            "time": "median over the timed rounds of the slowest rank's step (forward, combiner, optimizer step)",
            "speed_vs_ddp": "the ddp row's median / the row's median",
            "traffic": "numbers all-reduced per step by the combiner (the ddp row: the parameters, in DDP's buckets)",
        },
        "rows": results,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parents[1] / "docs" / "results" / "bench" / f"{got['name']}-cpu-ddp{world}.json"
    )
    from mtbench.files import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "| combiner | level | ms / step | speed vs DDP | collectives / step | numbers sent / step | traffic vs DDP |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for x in results:
        lines.append(
            f"| {x['combiner']} | {x['level'] or '—'} | {x['ms_per_step']:.0f} | {x['speed_vs_ddp']:.2f} "
            f"| {_fmt(x['collectives_per_step'], 'd')} | {x['numbers_per_step']} | {x['traffic_vs_ddp']:.2f}× |"
        )
    print("\n".join(lines))
    print(f"bench_step: wrote {out}", file=sys.stderr)
    return report


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "| combiner | level | ms / step | speed vs baseline | floor | peak memory (MiB) | steps |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for x in report["rows"]:
        if x.get("floor_vs_torchjd") is not None:
            mark = f"≥ {x['floor_vs_torchjd']:.0f}× torchjd ({x['vs_torchjd']:.1f}×)"
        elif x.get("floor") is not None:
            mark = f"≥ {x['floor']:.2f}"
        else:
            mark = ""
        if mark and x.get("meets_floor") is not None:
            mark += " ✓" if x["meets_floor"] else " ✗"
        if x.get("diagnostics_cost") is not None:
            mark = f"{x['diagnostics_cost']:.3f}× the row without diagnostics"
        if x.get("error"):
            mark = f"failed: {x['error'][:60]}"
        lines.append(
            f"| {x['combiner']} | {x['level'] or '—'} | {_fmt(x['ms_per_step'], '.0f')} | {_fmt(x['speed_vs_baseline'], '.2f')} "
            f"| {mark} | {_fmt(x['peak_memory_mib'], '.0f')} | {x['steps']} |"
        )
    for s in report["skipped"]:
        lines.append(f"| {s['row']} | — | — | — | {s['reason']} | — | 0 |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

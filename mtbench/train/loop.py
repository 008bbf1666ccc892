"""The training loop: batches -> model -> per-task losses -> combiner -> optimizer -> metrics.

Only the training step (forward, combiner, optimizer step) is timed; batch preparation and
evaluation are not, so ``train_step_s`` compares combiners honestly. Test metrics are those
of the epoch with the best validation score: the test split never selects anything.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import sys
import time
from typing import Any, Iterator

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mtbench import MtbenchError
from mtbench.combiners import Step, build_combiner
from mtbench.data import Split, Task, build_task
from mtbench.data.base import Labels, index_labels, labels_to
from mtbench.models import build_model
from mtbench.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("mtbench")

#: steps between progress-bar updates (the only host synchronisations inside an epoch)
LOG_EVERY = 20


class TrainingFailed(Exception):
    """The run cannot go on (e.g. a non-finite loss); ``str(exc)`` is the reason."""


def resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtbenchError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"trainer.device={name} but no CUDA GPU is visible; use trainer.device=cpu or auto")
    return device


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, Labels]]:
    """Mini-batches of (uint8 images, labels); shuffled by ``generator``, in order without one."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            idx = slice(start, start + batch_size)
            yield split.images[idx], index_labels(split.labels, idx)
        else:
            idx = order[start : start + batch_size]
            yield split.images[idx], index_labels(split.labels, idx)


class Preprocess:
    """uint8 images on the host -> normalised float images on the training device."""

    def __init__(self, task: Task, device: torch.device):
        self.device = device
        self.mean = task.mean.to(device).view(1, -1, 1, 1)
        self.std = task.std.to(device).view(1, -1, 1, 1)
        self.pin = device.type == "cuda"

    def __call__(self, images: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        if self.pin:
            images = images.pin_memory()
        x = images.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
        return x, labels_to(labels, self.device, non_blocking=self.pin)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, split: Split, prep: Preprocess, batch_size: int) -> dict[str, Any]:
    """The task's metrics on a whole split (scores gathered on the host, then ``task.evaluate``)."""
    model.eval()
    parts: list[Any] = []
    for images, labels in batches(split, batch_size):
        x, _ = prep(images, labels)
        _, outputs = model(x)
        parts.append(task.scores(outputs))
    if isinstance(parts[0], dict):
        scores: Any = {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
    else:
        scores = torch.cat([p.cpu() for p in parts])
    return task.evaluate(scores, split.labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run as configured; return the results that go into ``metrics.json``
    (``history`` holds one row per epoch). Raises ``TrainingFailed`` when the run cannot go on.
    """
    tcfg = cfg.trainer
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    device = resolve_device(tcfg.device)
    seed = int(cfg.seed)
    torch.manual_seed(seed)

    task = build_task(cfg.task)
    model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(device)
    combiner = build_combiner(cfg.combiner, task.num_tasks, default_leak=task.default_leak)
    optimizer = build_optimizer(model.parameters(), tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    prep = Preprocess(task, device)

    data_gen = torch.Generator().manual_seed(seed)  # batch order
    comb_gen = torch.Generator(device=device).manual_seed(seed + 1)  # combiner randomness (device)
    comb_cpu_gen = torch.Generator().manual_seed(seed + 2) if device.type != "cpu" else comb_gen  # (host)
    columns = {c.key: c for c in task.metric_columns}
    select = str(tcfg.select_metric) if tcfg.get("select_metric") else task.metric_columns[0].key
    if select not in columns:
        raise MtbenchError(f"trainer.select_metric={select!r} is not a metric of task {task.name}; choose one of: {', '.join(columns)}")
    higher = columns[select].higher_is_better
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)

    epochs, bs = int(tcfg.epochs), int(tcfg.batch_size)
    steps_per_epoch = math.ceil(len(task.train) / bs)
    show = bool(tcfg.progress) and sys.stderr.isatty()
    step_times: list[float] = []
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    examples = 0

    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        epoch_step_s = 0.0
        bar = tqdm(total=steps_per_epoch, desc=f"{combiner.name} epoch {epoch}/{epochs}", disable=not show, leave=False, file=sys.stderr)
        for i, (images, labels) in enumerate(batches(task.train, bs, data_gen)):
            x, y = prep(images, labels)
            x = task.augment(x)
            if combiner.needs_input_grad:
                x.requires_grad_(True)
            _sync(device)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            rep, outputs = model(x)
            losses = task.losses(outputs, y)
            combiner.backward(Step(model, x, rep, outputs, losses, comb_gen, comb_cpu_gen))
            optimizer.step()
            _sync(device)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            epoch_step_s += dt
            examples += x.shape[0]
            loss_sum += losses.detach().sum()
            if (i + 1) % LOG_EVERY == 0 or i + 1 == steps_per_epoch:
                mean_loss = loss_sum.item() / (i + 1)
                if not math.isfinite(mean_loss):
                    bad = [task.task_names[j] for j in torch.nonzero(~torch.isfinite(losses.detach())).flatten().tolist()]
                    where = f"task(s) {', '.join(bad)}" if bad else "an earlier step of this interval"
                    raise TrainingFailed(f"non-finite loss at epoch {epoch}, step {i + 1} ({where})")
                bar.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{x.shape[0] * (i + 1) / max(epoch_step_s, 1e-9):.0f}")
                bar.update(i + 1 - bar.n)
        bar.close()
        if scheduler is not None:
            scheduler.step()

        val = evaluate(model, task, task.val, prep, int(tcfg.eval_batch_size))
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / steps_per_epoch,
            **{f"val_{k}": val[k] for k in columns},
            "train_step_s": epoch_step_s / steps_per_epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"combiner_{k}": v for k, v in combiner.log_values().items()},
        }
        history.append(row)
        if best is None or better(val[select], best["val"][select]):
            best = {"epoch": epoch, "val": val}
            best_state = copy.deepcopy(model.state_dict())
        shown = "  ".join(f"val {c.header} {val[c.key]:.2f}" for c in task.metric_columns)
        log.info(f"[{cfg.name}] {combiner.name} seed={seed} epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}  {shown}")

    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    test = evaluate(model, task, task.test, prep, int(tcfg.eval_batch_size))
    total_step_s = sum(step_times)
    return {
        "best_epoch": best["epoch"],
        "select_metric": select,
        "metric_columns": [[c.key, c.header, c.higher_is_better] for c in task.metric_columns],
        "val": {k: best["val"][k] for k in columns},
        "test": {k: test[k] for k in columns},
        "test_per_attribute": test.get("per_attribute"),
        "train_step_s": statistics.median(step_times),
        "examples_per_s": examples / total_step_s if total_step_s > 0 else float("nan"),
        "steps": len(step_times),
        "device": str(device),
        "history": history,
    }

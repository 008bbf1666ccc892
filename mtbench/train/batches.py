"""Mini-batches of a split, moved to the training device and normalised; evaluation of a split;
the splits cut short for debugging (``trainer.overfit_batches``, ``trainer.max_eval_examples``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mtbench.data import Split, Task
from mtbench.data.base import Labels, index_labels, labels_to
from mtbench.train.device import channels_last as _channels_last

__all__ = ["Preprocess", "batches", "debug_splits", "evaluate", "second_batch"]


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, Labels]]:
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


def second_batch(split: Split, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Labels]:
    """A second, independent mini-batch (SDMGrad's and MoDo's): ``batch_size`` distinct examples
    drawn uniformly from the whole split by ``generator`` (the run's ``second batch``
    generator), whatever the first batch holds. It does not count in the epoch: the epoch is
    still one pass of first batches over the split."""
    idx = torch.randperm(len(split), generator=generator)[: min(batch_size, len(split))]
    return split.images[idx], index_labels(split.labels, idx)


class Preprocess:
    """Images on the host (uint8, or float32) -> normalised float images on the training device."""

    def __init__(self, task: Task, device: torch.device):
        self.device = device
        self.mean = task.mean.to(device).view(1, -1, 1, 1)
        self.std = task.std.to(device).view(1, -1, 1, 1)
        self.pin = device.type == "cuda"

    #: ``trainer.channels_last``: hand the batch over in channels-last memory format
    channels_last = False

    def __call__(self, images: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        if self.pin:  # pinned host memory: the copies below are truly asynchronous
            images = images.pin_memory()
            labels = {k: v.pin_memory() for k, v in labels.items()} if isinstance(labels, dict) else labels.pin_memory()
        if images.is_floating_point():  # float images (dense tasks): a copy, normalised as they are
            x = images.to(self.device, torch.float32, non_blocking=True, copy=True).sub_(self.mean).div_(self.std)
        else:
            x = images.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = _channels_last(x)
        return x, labels_to(labels, self.device, non_blocking=self.pin)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, task: Task, split: Split, prep: Preprocess, batch_size: int, world: Any = None
) -> dict[str, Any]:
    """The task's metrics on a whole split: batch by batch into ``task.accumulator()`` where the
    task has one (dense tasks), else scores gathered on the host, then ``task.evaluate``.

    ``world`` (``trainer.strategy=ddp``): each rank scores its contiguous part of the split and
    the parts are gathered in order, so every rank evaluates exactly the split's examples, each
    once; a task with an accumulator is evaluated whole on every rank."""
    model.eval()
    acc = task.accumulator()
    if world is not None and acc is None:
        part = rank_slice(len(split), world.rank, world.size)
        mine = Split(split.images[part], index_labels(split.labels, part)) if part.stop > part.start else None
        local = _scores(model, task, mine, prep, batch_size) if mine is not None else None
        parts = [p for p in world.gather(local) if p is not None]
        if isinstance(parts[0], dict):
            gathered: Any = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        else:
            gathered = torch.cat(parts)
        return task.evaluate(gathered, split.labels)
    if acc is not None:
        for images, labels in batches(split, batch_size):
            x, y = prep(images, labels)
            _, outputs = model(x)
            acc.update(outputs, y)
        return acc.compute()
    return task.evaluate(_scores(model, task, split, prep, batch_size), split.labels)


def _scores(model: torch.nn.Module, task: Task, split: Split, prep: Preprocess, batch_size: int) -> Any:
    """``task.scores`` of a split's examples, batch by batch, concatenated on the host."""
    parts: list[Any] = []
    for images, labels in batches(split, batch_size):
        x, _ = prep(images, labels)
        _, outputs = model(x)
        parts.append(task.scores(outputs))
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
    return torch.cat([p.cpu() for p in parts])


def rank_slice(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items split over ``size`` ranks (the first
    ``n % size`` parts one item longer): the parts cover 0..n-1 once, in order."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def debug_splits(task: Any, tcfg: Any, batch_size: int) -> None:
    """``trainer.overfit_batches``: train on the first N batches' examples only, and validate on
    them too (a handful of batches repeated every epoch: the loss should go to zero);
    ``trainer.max_eval_examples``: validate and test on the first N examples of each split."""

    def head(split: Any, n: int) -> Any:
        n = min(n, len(split))
        return Split(split.images[:n], index_labels(split.labels, torch.arange(n)))

    if tcfg.get("overfit_batches"):
        task.train = head(task.train, int(tcfg.overfit_batches) * batch_size)
        task.val = task.train
    if tcfg.get("max_eval_examples"):
        task.val, task.test = head(task.val, int(tcfg.max_eval_examples)), head(task.test, int(tcfg.max_eval_examples))

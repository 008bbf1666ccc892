"""Tasks: the data of each split, the heads, per-task losses and metrics.

``build_task(cfg.task)`` returns a :class:`Task`; each task is one module here and one config
file in ``configs/task/`` (its ``name`` selects the builder below).
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from mtbench import MtbenchError
from mtbench.data.base import BinaryAttributeTask, MetricColumn, Split, Task, channel_stats

__all__ = ["BinaryAttributeTask", "MetricColumn", "Split", "Task", "build_task", "TASKS"]


def _shapes40(cfg: DictConfig) -> Task:
    from mtbench.data.shapes40 import make_shapes40

    ds = make_shapes40(
        seed=int(cfg.data_seed),
        n_train=int(cfg.n_train),
        n_val=int(cfg.n_val),
        n_test=int(cfg.n_test),
        image_size=int(cfg.image_size),
    )
    splits = {s: Split(getattr(ds, s).images, getattr(ds, s).labels) for s in ("train", "val", "test")}
    mean, std = channel_stats(splits["train"].images)
    return BinaryAttributeTask("shapes40", list(ds.attribute_names), mean=mean, std=std, **splits)


def _cifar100_transfer(cfg: DictConfig) -> Task:
    from mtbench.data.cifar100 import build_cifar100_transfer

    return build_cifar100_transfer(cfg)


def _celeba(cfg: DictConfig) -> Task:
    from mtbench.data.celeba import build_celeba

    return build_celeba(cfg)


#: task builders by ``task.name``
TASKS: dict[str, Callable[[DictConfig], Task]] = {"shapes40": _shapes40, "cifar100_transfer": _cifar100_transfer, "celeba": _celeba}


def build_task(cfg: DictConfig) -> Task:
    """Build the task named by ``cfg.name`` (the ``task/`` config group)."""
    try:
        builder = TASKS[cfg.name]
    except KeyError:
        raise MtbenchError(f"task.name={cfg.name!r} is unknown; the tasks are: {', '.join(TASKS)}") from None
    return builder(cfg)


def metric_columns(name: str) -> tuple[MetricColumn, ...]:
    """The metric columns of the task ``name`` (without building it); empty for an unknown task."""
    if name in ("shapes40", "celeba"):
        return BinaryAttributeTask.metric_columns
    if name == "cifar100_transfer":
        from mtbench.data.cifar100 import COLUMNS

        return tuple(COLUMNS)
    return ()

"""Tasks: the data of each split, the heads, per-task losses and metrics.

``build_task(cfg.task)`` returns a :class:`Task`; each task is one module here and one config
file in ``configs/task/`` (its ``name`` selects the builder below).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from mtbench.data.base import BinaryAttributeTask, MetricColumn, Split, Task, TaskSpec, binary_columns, channel_stats
from mtbench.errors import MtbenchError

__all__ = ["BinaryAttributeTask", "MetricColumn", "Split", "Task", "TaskSpec", "build_task", "check_task", "TASKS"]


def _shapes40(cfg: DictConfig) -> Task:
    from mtbench.data.shapes40 import check_options, make_shapes40

    check_options(cfg)
    ds = make_shapes40(
        seed=int(cfg.data_seed),
        n_train=int(cfg.n_train),
        n_val=int(cfg.n_val),
        n_test=int(cfg.n_test),
        image_size=int(cfg.image_size),
    )
    splits = {s: Split(getattr(ds, s).images, getattr(ds, s).labels) for s in ("train", "val", "test")}
    mean, std = channel_stats(splits["train"].images)
    task = BinaryAttributeTask("shapes40", list(ds.attribute_names), mean=mean, std=std, **splits)
    task.metric_columns = binary_columns(cfg.get("columns"))
    task.two_way = cfg.get("head", "sigmoid") == "softmax2"
    return task


def _cifar100_transfer(cfg: DictConfig) -> Task:
    from mtbench.data.cifar100 import build_cifar100_transfer

    return build_cifar100_transfer(cfg)


def _celeba(cfg: DictConfig) -> Task:
    from mtbench.data.celeba import build_celeba

    return build_celeba(cfg)


def _nyuv2(cfg: DictConfig) -> Task:
    from mtbench.data.nyuv2 import build_nyuv2

    return build_nyuv2(cfg)


def _cityscapes(cfg: DictConfig) -> Task:
    from mtbench.data.cityscapes import build_cityscapes

    return build_cityscapes(cfg)


#: task builders by ``task.name``
TASKS: dict[str, Callable[[DictConfig], Task]] = {
    "shapes40": _shapes40,
    "cifar100_transfer": _cifar100_transfer,
    "celeba": _celeba,
    "nyuv2": _nyuv2,
    "cityscapes": _cityscapes,
}


def _check_shapes40(cfg: DictConfig) -> TaskSpec:
    from mtbench.data.shapes40 import check_options

    return check_options(cfg)


def _check_cifar100_transfer(cfg: DictConfig) -> TaskSpec:
    from mtbench.data.cifar100 import check_options

    return check_options(cfg)


def _check_celeba(cfg: DictConfig) -> TaskSpec:
    from mtbench.data.celeba import check_options

    return check_options(cfg)


def _check_nyuv2(cfg: DictConfig) -> TaskSpec:
    from mtbench.data.nyuv2 import check_options

    return check_options(cfg)


def _check_cityscapes(cfg: DictConfig) -> TaskSpec:
    from mtbench.data.cityscapes import check_options

    return check_options(cfg)


#: cheap option checks by ``task.name`` (no data built): what ``mtbench`` runs before a run starts
CHECKS: dict[str, Callable[[DictConfig], TaskSpec]] = {
    "shapes40": _check_shapes40,
    "cifar100_transfer": _check_cifar100_transfer,
    "celeba": _check_celeba,
    "nyuv2": _check_nyuv2,
    "cityscapes": _check_cityscapes,
}


def check_task(cfg: DictConfig) -> TaskSpec | None:
    """Check the task's options without building its data: the task's :class:`TaskSpec`, or
    None for a task registered in :data:`TASKS` without a check."""
    if cfg.get("name") not in TASKS:
        raise MtbenchError(f"task.name={cfg.get('name')!r} is unknown; the tasks are: {', '.join(TASKS)}")
    check = CHECKS.get(cfg.name)
    return check(cfg) if check is not None else None


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
    if name in ("nyuv2", "cityscapes"):
        from mtbench.data.dense import DATASETS

        ds = DATASETS[name]
        return ds.columns(list(ds.tasks))
    return ()

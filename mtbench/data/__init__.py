"""Tasks: datasets in memory, per-task losses, metrics. ``build_task(cfg.task)`` is the entry."""

from __future__ import annotations

from omegaconf import DictConfig

from mtbench import MtbenchError
from mtbench.data.base import Split, TaskData, channel_stats

__all__ = ["Split", "TaskData", "build_task"]


def build_task(cfg: DictConfig) -> TaskData:
    """Build the task named by ``cfg.name`` (the ``task/`` config group)."""
    if cfg.name == "shapes40":
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
        return TaskData("shapes40", list(ds.attribute_names), mean=mean, std=std, **splits)
    raise MtbenchError(f"task.name={cfg.name!r} is unknown; the tasks are: shapes40")

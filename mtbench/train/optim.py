"""Optimizer and learning-rate schedule from the ``trainer/`` config group.

``trainer.optimizer`` is a built-in name (``adam``, ``adamw``, ``sgd``) or a dotted path to a
``torch.optim.Optimizer`` subclass (``torch.optim.RMSprop``, ``my_package.MyOptimizer``), built
as ``cls(params, lr=trainer.lr, weight_decay=trainer.weight_decay, **trainer.optimizer_options)``.
``trainer.scheduler`` is a built-in name (``none``, ``cosine``, ``step``) or a dotted path to a
``torch.optim.lr_scheduler.LRScheduler`` subclass, built as
``cls(optimizer, **trainer.scheduler_options)``. The schedule is stepped once per epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtbench.errors import MtbenchError
from mtbench.options import import_target

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")


def is_dotted(value: Any) -> bool:
    """Whether an optimizer or scheduler value is a dotted path rather than a built-in name."""
    return "." in str(value)


def optimizer_class(value: Any) -> type[torch.optim.Optimizer]:
    """The class a dotted ``trainer.optimizer`` names; a one-line error when it is not one."""
    cls = import_target("trainer.optimizer", value)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise MtbenchError(
            f"trainer.optimizer={value!r} is not a torch.optim.Optimizer subclass; give one (e.g. torch.optim.RMSprop) or one of: {', '.join(OPTIMIZERS)}"
        )
    return cls


def scheduler_class(value: Any) -> type:
    """The class a dotted ``trainer.scheduler`` names; a one-line error when it is not one."""
    cls = import_target("trainer.scheduler", value)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)):
        raise MtbenchError(
            f"trainer.scheduler={value!r} is not a torch.optim.lr_scheduler.LRScheduler subclass; "
            f"give one (e.g. torch.optim.lr_scheduler.ExponentialLR) or one of: {', '.join(SCHEDULERS)}"
        )
    return cls


def _options(cfg: DictConfig, key: str) -> dict[str, Any]:
    raw = cfg.get(key)
    if raw is None:
        return {}
    options = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if not isinstance(options, dict):
        raise MtbenchError(
            f"trainer.{key} must map argument names to values, e.g. {{betas: [0.9, 0.99]}} (got {options!r})"
        )
    return options


def _build(kind: str, value: Any, cls: type, *args: Any, **kwargs: Any) -> Any:
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise MtbenchError(
            f"trainer.{kind}={value!r} cannot be built with {sorted(kwargs)} ({e}); set trainer.{kind}_options"
        ) from None


def build_optimizer(params, cfg: DictConfig) -> torch.optim.Optimizer:
    name, lr, wd = str(cfg.optimizer).lower(), float(cfg.lr), float(cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(cfg.momentum))
    if is_dotted(cfg.optimizer):
        cls = optimizer_class(cfg.optimizer)
        return _build(
            "optimizer", cfg.optimizer, cls, params, lr=lr, weight_decay=wd, **_options(cfg, "optimizer_options")
        )
    raise MtbenchError(
        f"trainer.optimizer={cfg.optimizer!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}, or a dotted path to a torch.optim.Optimizer class"
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    name = str(cfg.scheduler).lower()
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(cfg.epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.step_size), gamma=float(cfg.gamma))
    if is_dotted(cfg.scheduler):
        cls = scheduler_class(cfg.scheduler)
        return _build("scheduler", cfg.scheduler, cls, optimizer, **_options(cfg, "scheduler_options"))
    raise MtbenchError(
        f"trainer.scheduler={cfg.scheduler!r} is unknown; choose one of: {', '.join(SCHEDULERS)}, or a dotted path to a torch.optim.lr_scheduler.LRScheduler class"
    )

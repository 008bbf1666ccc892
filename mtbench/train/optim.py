"""Optimizer and learning-rate schedule from the ``trainer/`` config group."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from mtbench import MtbenchError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")


def build_optimizer(params, cfg: DictConfig) -> torch.optim.Optimizer:
    name, lr, wd = str(cfg.optimizer).lower(), float(cfg.lr), float(cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(cfg.momentum))
    raise MtbenchError(f"trainer.optimizer={cfg.optimizer!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch."""
    name = str(cfg.scheduler).lower()
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(cfg.epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.step_size), gamma=float(cfg.gamma))
    raise MtbenchError(f"trainer.scheduler={cfg.scheduler!r} is unknown; choose one of: {', '.join(SCHEDULERS)}")

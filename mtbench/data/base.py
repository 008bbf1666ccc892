"""What every task provides to the trainer: splits of tensors, per-task losses and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mtbench.metrics import binary_attribute_metrics


@dataclass
class Split:
    """One split held in memory: uint8 images [N, C, H, W] and labels [N, T]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class TaskData:
    """A multitask problem with T binary attributes (``kind: binary_attributes``).

    ``losses`` maps the heads' logits [B, T] and labels [B, T] to the T per-task losses
    (binary cross-entropy with logits, averaged over the batch): the vector a combiner
    turns into gradients. ``evaluate`` maps scores and labels of a whole split to metrics.
    """

    name: str
    task_names: list[str]
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    std: torch.Tensor = field(default_factory=lambda: torch.ones(3))

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(0)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def evaluate(self, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        return binary_attribute_metrics(scores, labels, names=self.task_names)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) of up to ``max_images`` uint8 images."""
    x = images[:max_images].to(torch.float32).div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std

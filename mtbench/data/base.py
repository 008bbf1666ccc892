"""What every task gives the trainer: splits, what its heads produce, per-task losses, metrics.

A task is a subclass of :class:`Task`. The trainer only ever calls the methods below, so a new
dataset (CelebA, CIFAR-100 transfer, yours) is one module under ``mtbench/data/`` plus one
config file under ``configs/task/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mtbench.metrics import binary_attribute_metrics

#: labels of a split: one tensor [N, ...] or a dict of such tensors (indexed together)
Labels = torch.Tensor | dict[str, torch.Tensor]


def index_labels(labels: Labels, idx: torch.Tensor) -> Labels:
    if isinstance(labels, dict):
        return {k: v[idx] for k, v in labels.items()}
    return labels[idx]


def labels_to(labels: Labels, device: torch.device, non_blocking: bool = False) -> Labels:
    if isinstance(labels, dict):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in labels.items()}
    return labels.to(device, non_blocking=non_blocking)


@dataclass(frozen=True)
class HeadSpec:
    """The task heads, described for ``mtbench.models.heads.build_heads``.

    ``outputs``: an int T, T logits stacked [B, T] (one linear head per task, stored as one
    [T, D] matrix); or a dict name -> width, one linear head per name whose outputs come as a
    dict of logits by name. ``init``: name -> (weight, bias) copied into that head (e.g. a
    pretrained classifier kept as a head). ``absent``: optional heads that are not there.
    """

    outputs: int | dict[str, int]
    init: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    absent: tuple[str, ...] = ()


@dataclass
class Split:
    """One split: images [N, C, H, W] (in memory or memory-mapped), uint8 (normalised with the
    task's mean and std after dividing by 255) or float32 (normalised with the mean and std
    as they are), and its labels."""

    images: torch.Tensor
    labels: Labels

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class MetricColumn:
    """A metric reported in ``metrics.json`` (``test``/``val``) and shown in the table."""

    key: str
    header: str
    higher_is_better: bool


@dataclass
class Task:
    """Base class of every task.

    Subclasses set ``metric_columns`` (the first one selects the reported epoch unless
    ``trainer.select_metric`` names another) and implement ``head_spec`` (or ``make_heads``),
    ``losses``, ``scores`` and ``evaluate``; ``setup`` is optional.
    """

    name: str
    task_names: list[str]
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    std: torch.Tensor = field(default_factory=lambda: torch.ones(3))

    #: GradDrop's per-task leak where the combiner's ``leak`` is null (e.g. 1 for a transfer target)
    default_leak: list[float] | None = None

    metric_columns: ClassVar[tuple[MetricColumn, ...]] = ()

    #: the host ``torch.Generator`` that ``augment`` draws from: the trainer sets it for each
    #: run (seeded from the run's seed for augmentation only, saved in checkpoints); None
    #: (outside the trainer) draws from torch's global generator
    augment_generator = None

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    def setup(self, device: Any) -> None:
        """Work that needs the training device (a ``torch.device``), done once per run after the
        task is built and before the model is (e.g. a frozen network's predictions); nothing by
        default. The trainer calls it on the same fork of the global generator as the build."""

    def head_spec(self) -> HeadSpec:
        """What the task heads produce (``mtbench.models.heads.build_heads`` builds them)."""
        raise NotImplementedError

    def make_heads(self, rep_dim: int) -> Any:
        """A task's own heads module reading the shared representation [B, rep_dim], for heads
        a :class:`HeadSpec` cannot describe; None (the default): the heads of ``head_spec()``."""
        return None

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time augmentation of a normalised float batch on the training device
        (identity by default); not timed as part of the training step. Random draws come
        from ``self.augment_generator`` only."""
        return x

    def augment_batch(self, x: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        """Training-time augmentation of a batch and its labels together (e.g. a crop that must
        move the image and its label maps alike), on the training device; the trainer calls
        this. By default ``(self.augment(x), labels)``: a task that augments images only
        overrides :meth:`augment`. Random draws come from ``self.augment_generator`` only."""
        return self.augment(x), labels

    def accumulator(self) -> Any:
        """A metric accumulator for evaluating a split batch by batch (memory bounded): an object
        with ``update(outputs, labels)`` per batch (the labels on the training device) and
        ``compute()`` returning the metrics dict; None (the default): the split is evaluated by
        ``evaluate(concatenated scores, labels)``."""
        return None

    def extend_batch(self, x: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        """Add examples from elsewhere to an (augmented) training batch, e.g. a transfer task's
        source-domain images drawn alongside; returns the new batch and labels (unchanged by
        default). Called on the training device after ``augment``; not timed."""
        return x, labels

    def losses(self, outputs: Any, labels: Labels) -> torch.Tensor:
        """The T per-task losses of a batch, a vector [T] (each a mean over the batch)."""
        raise NotImplementedError

    @property
    def column_losses(self) -> bool:
        """True when ``outputs`` is a [B, T] tensor and loss i reads its column i only (one logit
        per task, a per-attribute loss): then every dL_i/d outputs is column i of the gradient of
        sum_i L_i, one backward pass instead of T. False (the default) for any other task."""
        return False

    def scores(self, outputs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """What evaluation keeps of a batch's outputs (concatenated over the split)."""
        raise NotImplementedError

    def evaluate(self, scores: Any, labels: Labels) -> dict[str, Any]:
        """Metrics of a whole split: every ``metric_columns`` key, plus optional extras
        (``per_attribute``: a list of dicts written to ``per_attribute.csv``)."""
        raise NotImplementedError


class BinaryAttributeTask(Task):
    """T binary attributes (shapes40, CelebA): one logit per attribute from linear heads,
    binary cross-entropy with logits per attribute, error rate and max F1.

    With ``two_way`` (``task.head: softmax2``) each attribute has a two-way softmax head instead
    (two logits, the loss the negative log-likelihood of the log-softmax, the score the softmax
    probability of "present"), as in Kurin et al. 2022's CelebA code."""

    metric_columns = (
        MetricColumn("error_rate", "error rate (%)", False),
        MetricColumn("max_f1", "max F1", True),
    )

    #: two-way softmax heads (``task.head: softmax2``) instead of one logit per attribute
    two_way: bool = False

    def head_spec(self) -> HeadSpec:
        if self.two_way:
            return HeadSpec(2 * self.num_tasks)  # two logits per attribute, [B, 2T] -> [B, T, 2]
        return HeadSpec(self.num_tasks)  # one logit per attribute: T linear heads, stacked

    @property
    def column_losses(self) -> bool:
        # binary cross-entropy per logit column; not for two-way heads (two columns per loss), nor
        # for a subclass with losses of its own
        return not self.two_way and type(self).losses is BinaryAttributeTask.losses

    def losses(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.two_way:
            logits = outputs.reshape(outputs.shape[0], self.num_tasks, 2).float()
            nll = F.nll_loss(F.log_softmax(logits, dim=-1).reshape(-1, 2), labels.reshape(-1).long(), reduction="none")
            return nll.reshape(outputs.shape[0], self.num_tasks).mean(0).to(outputs.dtype)
        return F.binary_cross_entropy_with_logits(outputs, labels.to(outputs.dtype), reduction="none").mean(0)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.two_way:
            return torch.softmax(outputs.float().reshape(outputs.shape[0], self.num_tasks, 2), dim=-1)[..., 1]
        return torch.sigmoid(outputs.float())

    def evaluate(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        return binary_attribute_metrics(scores, labels, names=self.task_names)


#: every metric a binary-attribute task can report (``task.columns=[...]``; the first selects the
#: reported epoch unless ``trainer.select_metric`` names another)
BINARY_COLUMNS: dict[str, MetricColumn] = {
    c.key: c
    for c in (
        *BinaryAttributeTask.metric_columns,
        MetricColumn("mean_acc", "mean accuracy (%)", True),
        MetricColumn("min_acc", "min accuracy (%)", True),
        MetricColumn("mean_f1", "mean F1@0.5", True),
    )
}


def binary_columns(columns: Any) -> tuple[MetricColumn, ...]:
    """The metric columns ``task.columns`` asks for (null: the paper's error rate and max F1);
    an unknown or repeated one is a one-line error."""
    from mtbench.errors import MtbenchError

    if columns is None:
        return BinaryAttributeTask.metric_columns
    if isinstance(columns, str) or not hasattr(columns, "__iter__"):
        raise MtbenchError(
            f"task.columns must be a list of metrics, e.g. task.columns=[mean_acc,min_acc] (got {columns!r}); choose among {', '.join(BINARY_COLUMNS)}"
        )
    keys = [str(c) for c in columns]
    for key in keys:
        if key not in BINARY_COLUMNS:
            raise MtbenchError(
                f"task.columns: {key!r} is not a metric of binary-attribute tasks; choose among {', '.join(BINARY_COLUMNS)}"
            )
    if not keys or len(set(keys)) != len(keys):
        raise MtbenchError(
            f"task.columns={keys} must name at least one metric, each once; choose among {', '.join(BINARY_COLUMNS)}"
        )
    return tuple(BINARY_COLUMNS[k] for k in keys)


#: ``task.head`` of binary-attribute tasks
HEADS = ("sigmoid", "softmax2")


def check_binary_head(cfg: Any) -> None:
    """``task.head`` (sigmoid | softmax2) and ``task.columns``, checked without building data."""
    from mtbench.options import check_choice

    check_choice("task.head", cfg.get("head", "sigmoid"), HEADS)
    binary_columns(cfg.get("columns"))


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) of up to ``max_images`` uint8 images."""
    x = images[:max_images].to(torch.float32).div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


@dataclass(frozen=True)
class TaskSpec:
    """What a task's options say about it without building any data (``check_options``):
    enough to check the combiner and ``trainer.select_metric`` before a run starts."""

    num_tasks: int
    metric_keys: tuple[str, ...]
    #: GradDrop's per-task leak where the combiner's ``leak`` is null
    default_leak: list[float] | None = None
    #: a per-pixel task (NYUv2, Cityscapes) whose heads need a dense model
    dense: bool = False
    #: the tasks' names in loss order, where known without reading data (None: CelebA's come
    #: from its attribute file); a combiner option naming a task is checked against them
    task_names: tuple[str, ...] | None = None


def given_cache_dir(cache_dir: Any) -> Path:
    """``data.cache_dir`` as given by the user: an absolute folder, created if missing and
    writable, else a one-line error naming the option."""
    from mtbench.errors import MtbenchError

    root = Path(str(cache_dir)).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise MtbenchError(f"data.cache_dir={root} is a file, not a folder; remove it or choose another data.cache_dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtbenchError(f"data.cache_dir={root}: cannot create it ({e.strerror or e})") from None
    if not os.access(root, os.W_OK):
        raise MtbenchError(f"data.cache_dir={root} is not writable; choose another data.cache_dir")
    return root

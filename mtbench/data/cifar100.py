"""CIFAR-100 transfer from an ImageNet-pretrained ResNet (the GradDrop paper's second setting).

One pretrained trunk, several losses, each a task for the combiner:

- ``target``: cross-entropy of a new 100-way head on the CIFAR-100 fine labels;
- ``source``: the pretrained 1000-way ImageNet classifier kept as a head, distilled towards the
  frozen pretrained network's predictions (learning without forgetting: KL divergence at
  temperature ``task.temperature``, times T^2), or, with ``data.source_root`` (an ImageNet
  ImageFolder), trained with cross-entropy on ImageNet batches appended to each batch
  (:meth:`extend_batch`);
- ``coarse`` (``task.coarse: true``): cross-entropy of a 20-way head on the coarse labels.

The frozen network's predictions are computed once per process at ``Task.setup(device)`` (no
augmentation): float16 logits for training, the top-1 class for validation and test (the
source-agreement metric). Data: CIFAR-100's python version (:mod:`mtbench.data.cifar100_files`);
validation is ``task.val_size`` training images chosen by a permutation seeded with
``task.val_seed``; the test file is the test split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mtbench.data.base import HeadSpec, MetricColumn, Split, Task, TaskSpec
from mtbench.data.cifar100_files import (  # noqa: F401 (the files' names, importable from here too)
    FILES,
    FOLDER,
    LAYOUT,
    NUM_COARSE,
    NUM_FINE,
    Cifar100,
    find_cifar100,
    load_cifar100,
    split_train_val,
)
from mtbench.errors import MtbenchError
from mtbench.options import check_bool, check_int, check_number, check_str

log = logging.getLogger("mtbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- the frozen pretrained network ---------------------------------------------------------------


def normalize(images: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ImageNet-normalised float at ``size`` x ``size`` (bilinear), on ``device``."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = images.to(device).float().div_(255).sub_(mean).div_(std)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def teacher_logits(
    net: nn.Module, images: torch.Tensor, size: int, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """The frozen network's logits (float32, on the host) for uint8 images, in eval mode."""
    net.eval()
    out = [
        net(normalize(images[i : i + batch_size], size, device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass
class _Loaded:
    data: Cifar100
    train_idx: torch.Tensor
    val_idx: torch.Tensor


@dataclass
class _Teacher:
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor
    train_teacher: torch.Tensor | None  # float16 logits [N_train, 1000] (distillation only)
    val_teacher_top1: torch.Tensor
    test_teacher_top1: torch.Tensor


#: the loaded dataset and the frozen network's predictions, reused by the runs of a sweep in
#: the same process (one entry each)
_DATA_CACHE: dict[tuple, _Loaded] = {}
_TEACHER_CACHE: dict[tuple, _Teacher] = {}


def _weights_key(weights: str) -> tuple:
    path = Path(weights).expanduser()
    if path.is_file():
        st = path.stat()
        return (str(path.resolve()), st.st_mtime_ns, st.st_size)
    return (weights,)


def _load(root, download: bool, val_size: int, val_seed: int) -> _Loaded:
    key = (str(root), val_size, val_seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        data = load_cifar100(root, download)
        train_idx, val_idx = split_train_val(len(data.train_images), val_size, val_seed)
        _DATA_CACHE[key] = _Loaded(data, train_idx, val_idx)
    return _DATA_CACHE[key]


def _teacher(
    loaded: _Loaded,
    key: tuple,
    arch: str,
    weights: str,
    size: int,
    device: torch.device,
    batch_size: int,
    distill: bool,
) -> _Teacher:
    """The pretrained network's classifier and its predictions on the three splits (cached by ``key``)."""
    from mtbench.pretrained import load_resnet

    key = (*key, arch, _weights_key(weights), size, str(device), distill)
    if key in _TEACHER_CACHE:
        return _TEACHER_CACHE[key]
    _TEACHER_CACHE.clear()
    data, train_idx, val_idx = loaded.data, loaded.train_idx, loaded.val_idx
    net = load_resnet(arch, weights)
    fc = net.fc
    if not isinstance(fc, nn.Linear):
        raise MtbenchError(f"model.weights={weights}: {arch} has no linear classifier to keep as the source head")
    fc_weight, fc_bias = fc.weight.detach().clone(), fc.bias.detach().clone()
    net = net.to(device)
    t0 = time.perf_counter()
    train_teacher = (
        teacher_logits(net, data.train_images[train_idx], size, device, batch_size).half() if distill else None
    )
    val_top1 = teacher_logits(net, data.train_images[val_idx], size, device, batch_size).argmax(1)
    test_top1 = teacher_logits(net, data.test_images, size, device, batch_size).argmax(1)
    n = (len(train_idx) if distill else 0) + len(val_idx) + len(data.test_images)
    log.info(
        f"cifar100_transfer: pretrained {arch} predictions for {n} images at {size}x{size} in {time.perf_counter() - t0:.1f} s ({device})"
    )
    del net
    teacher = _Teacher(fc_weight, fc_bias, train_teacher, val_top1, test_top1)
    _TEACHER_CACHE[key] = teacher
    return teacher


# -- real ImageNet batches drawn alongside (data.source_root) -----------------------------------


class ImageNetSource:
    """An endless stream of shuffled ImageNet batches from an ImageFolder (``data.source_root``):
    uint8 images resized (shorter side) and centre-cropped to ``size``, and their class indices
    (the position of the class folder in sorted order, torchvision's ImageFolder rule, which is
    the pretrained classifier's order when the folders are the 1000 ImageNet synset ids)."""

    def __init__(self, root: str | Path, size: int, batch_size: int, num_classes: int, seed: int = 0, workers: int = 0):
        import torchvision
        from torchvision import transforms

        root = Path(str(root)).expanduser()
        if not root.is_dir():
            raise MtbenchError(
                f"data.source_root={root} is not a folder; give an ImageNet ImageFolder (one sub-folder per class) or leave it null to distil"
            )
        transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
        try:
            self.dataset = torchvision.datasets.ImageFolder(str(root), transform=transform, allow_empty=True)
        except (FileNotFoundError, RuntimeError) as e:
            raise MtbenchError(f"data.source_root={root}: not an ImageFolder ({e})") from None
        if len(self.dataset.classes) != num_classes:
            raise MtbenchError(
                f"data.source_root={root} has {len(self.dataset.classes)} class folders; the pretrained classifier has {num_classes} "
                f"(one folder per ImageNet class, named so that sorted order is the classifier's order)"
            )
        if len(self.dataset) == 0:
            raise MtbenchError(f"data.source_root={root} holds no images")
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=int(batch_size),
            shuffle=True,
            drop_last=False,
            num_workers=int(workers),
            generator=torch.Generator().manual_seed(int(seed)),
            persistent_workers=int(workers) > 0,
        )
        self._it = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise RuntimeError("the ImageNet source yields no batches")


# -- the task --------------------------------------------------------------------------------------


COLUMNS = (
    MetricColumn("top1_error", "target top-1 error (%)", False),
    MetricColumn("top5_error", "target top-5 error (%)", False),
    MetricColumn("source_agreement", "source agreement (%)", True),
)
COARSE_COLUMN = MetricColumn("coarse_error", "coarse top-1 error (%)", False)


@dataclass
class Cifar100Transfer(Task):
    """CIFAR-100 fine labels as the target, the ImageNet classifier as the source (see module doc).

    Labels are dicts: ``fine``, ``coarse`` for every split; ``teacher`` (float16 logits) in the
    training split when distilling; ``teacher_top1`` in validation and test."""

    fc_weight: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    fc_bias: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    temperature: float = 2.0
    image_size: int = 32
    fine_names: list[str] = field(default_factory=list)
    source: ImageNetSource | None = None
    #: what ``setup`` needs (None once it ran)
    _setup: dict[str, Any] | None = None

    metric_columns = COLUMNS

    def __post_init__(self) -> None:
        if "coarse" in self.task_names:
            self.metric_columns = COLUMNS + (COARSE_COLUMN,)

    def setup(self, device: torch.device) -> None:
        """The frozen pretrained network's classifier (kept as the source head) and predictions:
        distillation targets for the training split, the top-1 class for validation and test
        (cached in the process). Computed on ``task.device`` when it names a device, else (auto)
        on the training ``device``; with ``data.source_root``, the ImageNet stream is opened."""
        if self._setup is None:
            return
        opts, self._setup = self._setup, None
        device = torch.device(opts["device"]) if opts["device"] not in (None, "auto") else device
        loaded = opts["loaded"]
        t = _teacher(
            loaded,
            opts["key"],
            opts["arch"],
            opts["weights"],
            self.image_size,
            device,
            opts["batch_size"],
            opts["distill"],
        )
        self.fc_weight, self.fc_bias = t.fc_weight, t.fc_bias
        if t.train_teacher is not None:
            self.train.labels["teacher"] = t.train_teacher
        self.val.labels["teacher_top1"] = t.val_teacher_top1
        self.test.labels["teacher_top1"] = t.test_teacher_top1
        if opts["source_root"]:
            self.source = ImageNetSource(
                opts["source_root"],
                self.image_size,
                opts["source_batch_size"],
                t.fc_weight.shape[0],
                seed=opts["seed"],
                workers=opts["workers"],
            )

    def head_spec(self) -> HeadSpec:
        """``target`` (new, 100-way), ``source`` (the pretrained classifier, 1000-way) and
        optionally ``coarse`` (new, 20-way); the heads' outputs are a dict of logits by task name."""
        if self._setup is not None:
            raise RuntimeError(
                "the cifar100_transfer task's heads need its pretrained classifier: call task.setup(device) first"
            )
        coarse = "coarse" in self.task_names
        outputs = {
            "target": NUM_FINE,
            "source": int(self.fc_weight.shape[0]),
            **({"coarse": NUM_COARSE} if coarse else {}),
        }
        return HeadSpec(outputs, init={"source": (self.fc_weight, self.fc_bias)}, absent=() if coarse else ("coarse",))

    def extend_batch(
        self, x: torch.Tensor, labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """With ``data.source_root``: append an ImageNet batch (rows after the CIFAR ones);
        its class indices go in ``labels["source"]``. CIFAR images are first resized to
        ``image_size`` (what the trunk would do) so the two can share one batch."""
        if self.source is None:
            return x, labels
        images, classes = self.source.next()
        src = normalize(images, self.image_size, x.device).to(x.dtype)
        if x.shape[-2:] != src.shape[-2:]:
            x = F.interpolate(x, size=src.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, src]), {**labels, "source": classes.to(x.device)}

    def _distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p = F.log_softmax(student.float() / t, dim=1)
        log_q = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)

    def losses(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        n = labels["fine"].shape[0]  # CIFAR rows; ImageNet rows (if any) follow
        parts = []
        for name in self.task_names:
            if name == "target":
                parts.append(F.cross_entropy(outputs["target"][:n], labels["fine"]))
            elif name == "source":
                if "source" in labels:
                    parts.append(F.cross_entropy(outputs["source"][n:], labels["source"]))
                else:
                    parts.append(self._distill(outputs["source"][:n], labels["teacher"]))
            elif name == "coarse":
                parts.append(F.cross_entropy(outputs["coarse"][:n], labels["coarse"]))
        return torch.stack([p.to(torch.float32) for p in parts])

    def scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = {"target_top5": outputs["target"].topk(5, dim=1).indices, "source_top1": outputs["source"].argmax(1)}
        if "coarse" in outputs:
            scores["coarse_top1"] = outputs["coarse"].argmax(1)
        return scores

    def evaluate(self, scores: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
        fine = labels["fine"]
        top5 = scores["target_top5"]
        hit1 = top5[:, 0] == fine
        hit5 = (top5 == fine[:, None]).any(1)
        result: dict[str, Any] = {
            "top1_error": 100.0 * (1.0 - hit1.double().mean().item()),
            "top5_error": 100.0 * (1.0 - hit5.double().mean().item()),
            "source_agreement": 100.0 * (scores["source_top1"] == labels["teacher_top1"]).double().mean().item(),
        }
        if "coarse_top1" in scores:
            result["coarse_error"] = 100.0 * (1.0 - (scores["coarse_top1"] == labels["coarse"]).double().mean().item())
        # per fine class, in per_attribute.csv's columns (attribute, base_rate, error), so the
        # report's per-attribute table compares combiners class by class
        rows = []
        n = max(int(fine.numel()), 1)
        for c, name in enumerate(self.fine_names):
            mask = fine == c
            count = int(mask.sum())
            rows.append(
                {
                    "attribute": name,
                    "base_rate": count / n,
                    "error": 100.0 * (1.0 - hit1[mask].double().mean().item()) if count else float("nan"),
                    "top5_error": 100.0 * (1.0 - hit5[mask].double().mean().item()) if count else float("nan"),
                    "count": count,
                }
            )
        result["per_attribute"] = rows
        return result


def _leaks(cfg: DictConfig, names: list[str]) -> list[float]:
    raw = cfg.get("leak")
    leak = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw
    if leak is None:
        leak = {"target": 1.0}
    if not isinstance(leak, dict):
        raise MtbenchError(f"task.leak must map task names to leaks, e.g. {{target: 1.0, source: 0.0}} (got {leak!r})")
    unknown = sorted(set(leak) - {"target", "source", "coarse"})
    if unknown:
        raise MtbenchError(
            f"task.leak.{unknown[0]}: not a task of cifar100_transfer; its tasks are target, source, coarse"
        )
    for key, value in leak.items():
        check_number(f"task.leak.{key}", value, minimum=0, maximum=1)
    return [float(leak.get(n, 0.0)) for n in names]


def check_options(cfg: DictConfig) -> TaskSpec:
    """Check the ``task=cifar100_transfer`` options (no file is read, no network built); a
    one-line error names the option, the value and what is allowed."""
    arch = str(cfg.get("arch"))
    if arch not in ("resnet18", "resnet50"):
        raise MtbenchError(
            f"task=cifar100_transfer needs an ImageNet ResNet trunk: model=resnet18 or model=resnet50 (got model={arch})"
        )
    if not cfg.get("weights"):
        raise MtbenchError(
            "task=cifar100_transfer needs pretrained weights: model.weights=IMAGENET1K_V1 (torchvision's, downloaded once) or model.weights=/path/to/state_dict.pth"
        )
    check_str("data.root", cfg.get("root"), optional=True)
    check_bool("data.download", cfg.get("download", False))
    check_str("data.source_root", cfg.get("source_root"), optional=True)
    check_int("data.image_size", cfg.get("image_size"), minimum=32)
    check_str("model.weights", cfg.get("weights"))
    check_int("task.val_size", cfg.get("val_size"), minimum=1)
    check_int("task.val_seed", cfg.get("val_seed"), minimum=0)
    check_number("task.temperature", cfg.get("temperature"), minimum=0, min_open=True)
    coarse = check_bool("task.coarse", cfg.get("coarse", False))
    check_int("task.teacher_batch_size", cfg.get("teacher_batch_size"), minimum=1)
    check_int("task.source_batch_size", cfg.get("source_batch_size"), minimum=1)
    check_int("task.source_workers", cfg.get("source_workers", 0), minimum=0)
    check_int("task.seed", cfg.get("seed", 0), minimum=0)
    names = ["target", "source"] + (["coarse"] if coarse else [])
    leak = _leaks(cfg, names)
    columns = COLUMNS + ((COARSE_COLUMN,) if coarse else ())
    return TaskSpec(len(names), tuple(c.key for c in columns), default_leak=leak, task_names=tuple(names))


def build_cifar100_transfer(cfg: DictConfig) -> Cifar100Transfer:
    """The ``cifar100_transfer`` task from its config (``configs/task/cifar100_transfer.yaml``):
    the CIFAR-100 splits; the pretrained network's part comes with ``setup(device)``."""
    check_options(cfg)
    arch, weights = str(cfg.arch), cfg.get("weights")
    size, temperature = int(cfg.image_size), float(cfg.temperature)
    names = ["target", "source"] + (["coarse"] if bool(cfg.coarse) else [])
    leak = _leaks(cfg, names)
    source_root = cfg.get("source_root")

    loaded = _load(cfg.root, bool(cfg.download), int(cfg.val_size), int(cfg.val_seed))
    d, train_idx, val_idx = loaded.data, loaded.train_idx, loaded.val_idx
    splits = {
        "train": Split(
            d.train_images[train_idx], {"fine": d.train_fine[train_idx], "coarse": d.train_coarse[train_idx]}
        ),
        "val": Split(d.train_images[val_idx], {"fine": d.train_fine[val_idx], "coarse": d.train_coarse[val_idx]}),
        "test": Split(d.test_images, {"fine": d.test_fine, "coarse": d.test_coarse}),
    }
    device = cfg.get("device", "cpu")
    setup = {
        "loaded": loaded,
        "key": (str(cfg.root), int(cfg.val_size), int(cfg.val_seed)),
        "arch": arch,
        "weights": str(weights),
        "device": None if device is None else str(device),
        "batch_size": int(cfg.teacher_batch_size),
        "distill": not source_root,
        "source_root": source_root,
        "source_batch_size": int(cfg.source_batch_size),
        "seed": int(cfg.get("seed", 0)),
        "workers": int(cfg.get("source_workers", 0)),
    }
    return Cifar100Transfer(
        "cifar100_transfer",
        names,
        **splits,
        mean=torch.tensor(IMAGENET_MEAN),
        std=torch.tensor(IMAGENET_STD),
        default_leak=leak,
        temperature=temperature,
        image_size=size,
        fine_names=d.fine_names,
        _setup=setup,
    )


__all__ = [
    "Cifar100Transfer",
    "ImageNetSource",
    "build_cifar100_transfer",
    "find_cifar100",
    "load_cifar100",
    "split_train_val",
]

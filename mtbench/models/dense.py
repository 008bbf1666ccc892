"""Dense-prediction models (NYUv2, Cityscapes): a trunk giving feature maps, one decoder head
per task, per-pixel outputs at the input's resolution.

``model(x)`` returns ``(rep, outputs)``: ``rep`` the shared representation [B, C, H', W'] (the
trunk's output, what the heads read) and ``outputs`` a dict {task: [B, C_t, H, W]} in the
order of the task's ``head_spec().outputs``. The heads are ordinary heads
(``head_parameters()``), the trunk is ``shared_parameters()``; the heads are not linear, so
the combiners take the per-task gradients at the representation by batched autograd calls
through the heads (their general path).

The models (``model.name``):

* ``segnet``: MTAN's SegNet, "split" (shared SegNet, per-task 3x3 + 1x1 convolution heads);
  ``rep`` = the last decoder map [B, 64, H, W].
* ``segnet_mtan``: the same SegNet with per-task attention (:mod:`mtbench.models.mtan`);
  ``rep`` = the T attended maps concatenated [B, T * 64, H, W], no single shared
  representation (``shared_representation = False``: combiners at ``level: params`` only).
* ``resnet50_deeplab``: ResNet-50 dilated, one ASPP head per task (:mod:`mtbench.models.deeplab`);
  ``rep`` = layer4's output [B, 2048, H/8, W/8], the heads' outputs upsampled to H x W.
* ``small_segnet``: the split SegNet with few channels and two levels, for a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.models.multitask import MultiTaskModel

__all__ = [
    "DENSE_MODELS",
    "DenseHeads",
    "DenseModel",
    "build_dense_model",
    "check_model_for_task",
    "is_dense_model",
    "shared_representation",
]

#: the built-in dense-prediction models (``model.name``)
DENSE_MODELS = ("segnet", "segnet_mtan", "resnet50_deeplab", "small_segnet")

#: the reference SegNet's filters (one per level)
SEGNET_FILTERS = (64, 128, 256, 512, 512)


def is_dense_model(cfg: Any) -> bool:
    """Whether ``model.name`` is a built-in dense-prediction model (and no ``_target_``)."""
    return not cfg.get("_target_") and cfg.get("name") in DENSE_MODELS


def shared_representation(cfg: Any) -> bool | None:
    """Whether the model the ``model/`` config names has one shared representation (what the
    combiners at ``level: representation`` need), known without building it: False for
    ``segnet_mtan``, True for the other built-ins, None for a ``model._target_``."""
    if cfg.get("_target_"):
        return None
    return cfg.get("name") != "segnet_mtan"


class DenseHeads(nn.Module):
    """One head per task (an attribute named after the task), built by ``make(in, out)``;
    ``forward(rep)`` gives a dict {task: head(rep)} in the order of ``outputs``.

    ``split``: each head reads its own block of ``in_channels`` channels of ``rep`` (task i:
    channels i*in .. (i+1)*in), for a trunk that gives per-task maps concatenated (MTAN)."""

    def __init__(self, in_channels: int, outputs: dict[str, int], make: Any, split: bool = False):
        super().__init__()
        self.names = list(outputs)
        self.in_channels = int(in_channels)
        self.split = bool(split)
        for name, width in outputs.items():
            setattr(self, name, make(self.in_channels, int(width)))

    def forward(self, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.in_channels
        if self.split:
            return {n: getattr(self, n)(rep[:, i * c : (i + 1) * c]) for i, n in enumerate(self.names)}
        return {n: getattr(self, n)(rep) for n in self.names}


class DenseModel(MultiTaskModel):
    """``trunk(x) -> rep -> heads(rep)``, each output resized (bilinear, ``align_corners=True``)
    to the input's height and width where the heads' maps are smaller (DeepLab); returns
    ``(rep, {task: output})``. ``shared_representation``: whether ``rep`` is one
    representation every task reads (False for MTAN's per-task maps)."""

    def __init__(self, trunk: nn.Module, heads: DenseHeads, rep_dim: int, shared_representation: bool = True):
        super().__init__(trunk, heads, rep_dim)
        self.shared_representation = bool(shared_representation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[override]
        rep = self.trunk(x)
        outputs = self.heads(rep)
        size = x.shape[-2:]
        for name, out in outputs.items():
            if out.shape[-2:] != size:
                outputs[name] = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return rep, outputs

    def linear_heads(self) -> None:
        return None


def _filters(cfg: Any, default: tuple[int, ...]) -> list[int]:
    value = cfg.get("filters", list(default))
    return [int(c) for c in value]


def check_dense_model(cfg: Any) -> None:
    """Check a dense model's options (one-line errors naming ``model.<option>``)."""
    from mtbench.options import check_int, check_str

    name = cfg.get("name")
    if name in ("segnet", "segnet_mtan", "small_segnet"):
        filters = cfg.get("filters")
        minimum = 2 if name == "segnet_mtan" else 1
        if filters is None or isinstance(filters, (str, bytes, int, float)) or not hasattr(filters, "__len__"):
            raise MtbenchError(
                f"model.filters={filters!r} must be a list of channel counts, one per level, e.g. model.filters=[64,128,256,512,512]"
            )
        if len(filters) < minimum:
            raise MtbenchError(
                f"model.filters={list(filters)!r} must have at least {minimum} level{'s' if minimum > 1 else ''} for model={name}"
            )
        for i, c in enumerate(filters):
            check_int(f"model.filters[{i}]", c, minimum=1)
    elif name == "resnet50_deeplab":
        check_str("model.weights", cfg.get("weights"), optional=True)


def check_model_for_task(cfg: Any, dense: bool | None) -> None:
    """Before a run: a built-in dense model needs a dense task and a dense task a dense model
    (or a ``model._target_`` trunk giving a feature map); ``dense`` None (not known) passes."""
    if dense is None or cfg.get("_target_"):
        return
    if is_dense_model(cfg) and not dense:
        raise MtbenchError(
            f"model={cfg.get('name')} predicts per-pixel maps and needs a dense task (task=nyuv2 or task=cityscapes); "
            "for this task choose model=small_cnn, resnet18 or resnet50"
        )
    if dense and not is_dense_model(cfg):
        raise MtbenchError(
            f"model={cfg.get('name')} gives one feature vector per image, but this task predicts per-pixel maps; "
            f"choose model={' or model='.join(DENSE_MODELS)}"
        )


def build_dense_model(cfg: Any, task: Any, in_channels: int = 3) -> DenseModel:
    """The dense model ``cfg.name`` with one head per entry of ``task.head_spec().outputs``
    (a dict task -> channels); a one-line error when the task is not a dense one."""
    from mtbench.models.segnet import ConvHead, SegNet

    name = cfg.name
    outputs = task.head_spec().outputs if task is not None else None
    if not isinstance(outputs, dict) or not getattr(task, "dense", False):
        raise MtbenchError(
            f"model={name} predicts per-pixel maps and needs a dense task (task=nyuv2 or task=cityscapes); "
            "for this task choose model=small_cnn, resnet18 or resnet50"
        )
    outputs = {str(k): int(v) for k, v in outputs.items()}
    if name in ("segnet", "small_segnet"):
        trunk = SegNet(in_channels, _filters(cfg, SEGNET_FILTERS if name == "segnet" else (8, 16)))
        heads = DenseHeads(trunk.out_channels, outputs, ConvHead)
        return DenseModel(trunk, heads, trunk.out_channels)
    if name == "segnet_mtan":
        from mtbench.models.mtan import SegNetMTAN

        trunk = SegNetMTAN(len(outputs), in_channels, _filters(cfg, SEGNET_FILTERS))
        heads = DenseHeads(trunk.out_channels, outputs, ConvHead, split=True)
        return DenseModel(trunk, heads, trunk.out_channels * len(outputs), shared_representation=False)
    if name == "resnet50_deeplab":
        from mtbench.models.deeplab import DilatedResNet50, aspp_head

        if in_channels != 3:
            raise MtbenchError(f"model=resnet50_deeplab reads RGB images (3 channels); this task has {in_channels}")
        trunk = DilatedResNet50(cfg.get("weights"))
        heads = DenseHeads(trunk.out_channels, outputs, aspp_head)
        return DenseModel(trunk, heads, trunk.out_channels)
    raise MtbenchError(f"model.name={name!r} is not a dense model; choose {', '.join(DENSE_MODELS)}")

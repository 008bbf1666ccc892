"""Models: shared trunk -> shared representation -> task heads."""

from __future__ import annotations

from omegaconf import DictConfig

from mtbench import MtbenchError
from mtbench.models.multitask import LinearHeads, MultiTaskModel
from mtbench.models.resnet import resnet_trunk
from mtbench.models.small_cnn import SmallCNN

__all__ = ["LinearHeads", "MultiTaskModel", "build_model"]


def build_model(cfg: DictConfig, num_tasks: int, in_channels: int = 3) -> MultiTaskModel:
    """Build the model named by ``cfg.name`` (the ``model/`` config group)."""
    name = cfg.name
    if name == "small_cnn":
        trunk = SmallCNN(in_channels=in_channels, width=int(cfg.width), rep_dim=int(cfg.rep_dim))
        dim = trunk.rep_dim
    elif name in ("resnet18", "resnet50"):
        trunk, dim = resnet_trunk(name, small_input=bool(cfg.get("small_input", True)), weights=cfg.get("weights"))
    else:
        raise MtbenchError(f"model.name={name!r} is unknown; choose small_cnn, resnet18 or resnet50")
    return MultiTaskModel(trunk, LinearHeads(dim, num_tasks), rep_dim=dim)

"""Models: shared trunk -> shared representation -> task heads (built from the task's ``head_spec``)."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from mtbench import MtbenchError
from mtbench.models.heads import NamedHeads, build_heads
from mtbench.models.multitask import LinearHeads, MultiTaskModel
from mtbench.models.resnet import resnet_trunk
from mtbench.models.small_cnn import SmallCNN

__all__ = ["LinearHeads", "MultiTaskModel", "NamedHeads", "build_heads", "build_model", "build_trunk", "check_model"]


def build_trunk(cfg: DictConfig, in_channels: int = 3) -> tuple[nn.Module, int]:
    """The trunk named by ``cfg.name`` (the ``model/`` config group) and its representation size."""
    name = cfg.name
    if name == "small_cnn":
        trunk = SmallCNN(in_channels=in_channels, width=int(cfg.width), rep_dim=int(cfg.rep_dim))
        return trunk, trunk.rep_dim
    if name in ("resnet18", "resnet50"):
        return resnet_trunk(
            name, small_input=bool(cfg.get("small_input", True)), weights=cfg.get("weights"), input_size=cfg.get("input_size")
        )
    raise MtbenchError(f"model.name={name!r} is unknown; choose small_cnn, resnet18 or resnet50")


def check_model(cfg: DictConfig) -> None:
    """Check the ``model/`` options without building anything (a one-line error names the option)."""
    from mtbench.options import check_bool, check_int, check_str

    name = cfg.get("name")
    if name == "small_cnn":
        check_int("model.width", cfg.get("width"), minimum=1)
        check_int("model.rep_dim", cfg.get("rep_dim"), minimum=1)
    elif name in ("resnet18", "resnet50"):
        check_bool("model.small_input", cfg.get("small_input", True))
        check_str("model.weights", cfg.get("weights"), optional=True)
        check_int("model.input_size", cfg.get("input_size"), minimum=1, optional=True)
    else:
        raise MtbenchError(f"model.name={name!r} is unknown; choose small_cnn, resnet18 or resnet50")


def build_model(cfg: DictConfig, num_tasks: int | None = None, in_channels: int = 3, task=None) -> MultiTaskModel:
    """Trunk from ``cfg``; heads from the task (``task.make_heads``, else built from
    ``task.head_spec()``), or ``num_tasks`` linear heads."""
    trunk, dim = build_trunk(cfg, in_channels)
    if task is not None:
        heads = task.make_heads(dim)
        if heads is None:
            heads = build_heads(task.head_spec(), dim)
    elif num_tasks is not None:
        heads = LinearHeads(dim, num_tasks)
    else:
        raise ValueError("build_model needs a task or num_tasks")
    return MultiTaskModel(trunk, heads, rep_dim=dim)

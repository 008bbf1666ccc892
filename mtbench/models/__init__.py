"""Models: shared trunk -> shared representation -> task heads (built from the task's ``head_spec``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.models.dense import (
    DENSE_MODELS,
    DenseHeads,
    DenseModel,
    check_dense_model,
    is_dense_model,
    shared_representation,
)
from mtbench.models.heads import NamedHeads, build_heads
from mtbench.models.multitask import LinearHeads, MultiTaskModel
from mtbench.models.resnet import resnet_trunk
from mtbench.models.small_cnn import SmallCNN

#: the built-in trunks (``model.name``)
MODELS = ("small_cnn", "resnet18", "resnet50", "kurin_resnet18", "famo_cnn", *DENSE_MODELS)

__all__ = [
    "DENSE_MODELS",
    "DenseHeads",
    "DenseModel",
    "LinearHeads",
    "MultiTaskModel",
    "NamedHeads",
    "build_heads",
    "build_model",
    "build_trunk",
    "check_model",
    "shared_representation",
]


def _target(cfg: DictConfig):
    """The callable ``model._target_`` names (importable and callable, else a one-line error)."""
    from mtbench.options import import_target

    build = import_target("model._target_", cfg._target_)
    if not callable(build):
        raise MtbenchError(
            f"model._target_={cfg._target_!r} is not callable; give a function build(in_channels, **options) -> (trunk, rep_dim)"
        )
    return build


def _build_target(cfg: DictConfig, in_channels: int) -> tuple[nn.Module, int]:
    """``model._target_``: ``build(in_channels=..., **options)`` with the model node's other
    keys (``name`` and ``_target_`` aside) as ``options``; it returns the trunk (an
    ``nn.Module`` mapping a batch to the shared representation [B, rep_dim] or [B, *F]) and
    the representation's width ``rep_dim`` (what the heads read, flattened)."""
    build = _target(cfg)
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    options.pop("_target_", None)
    options.pop("name", None)
    try:
        out = build(in_channels=in_channels, **options)
    except TypeError as e:
        raise MtbenchError(
            f"model._target_={cfg._target_!r} cannot be called with in_channels and {sorted(options)} ({e})"
        ) from None
    if not (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], nn.Module)
        and isinstance(out[1], int)
        and not isinstance(out[1], bool)
    ):
        raise MtbenchError(
            f"model._target_={cfg._target_!r} must return (trunk, rep_dim): an nn.Module and an int (got {type(out).__name__})"
        )
    return out


def build_trunk(cfg: DictConfig, in_channels: int = 3) -> tuple[nn.Module, int]:
    """The trunk of the ``model/`` config group and its representation size: ``model._target_``
    (a dotted path to a function, see :func:`_build_target`) or the built-in named by ``cfg.name``."""
    if cfg.get("_target_"):
        return _build_target(cfg, in_channels)
    name = cfg.name
    if name == "small_cnn":
        trunk = SmallCNN(in_channels=in_channels, width=int(cfg.width), rep_dim=int(cfg.rep_dim))
        return trunk, trunk.rep_dim
    if name in ("resnet18", "resnet50"):
        return resnet_trunk(
            name,
            small_input=bool(cfg.get("small_input", True)),
            weights=cfg.get("weights"),
            input_size=cfg.get("input_size"),
        )
    if name == "kurin_resnet18":
        from mtbench.models.published import KurinResNet18

        trunk = KurinResNet18(in_channels, input_size=int(cfg.input_size), stem_dropout=float(cfg.stem_dropout),
                              block_dropout=float(cfg.block_dropout), rep_dropout=float(cfg.rep_dropout), pool=int(cfg.pool))  # fmt: skip
        return trunk, trunk.rep_dim
    if name == "famo_cnn":
        from mtbench.models.published import FamoCNN

        trunk = FamoCNN(in_channels, width=int(cfg.get("width", 64)))
        return trunk, trunk.rep_dim
    if name in DENSE_MODELS:
        raise MtbenchError(
            f"model={name} is a dense-prediction model: build it with its task's heads (build_model(cfg, task=task))"
        )
    raise MtbenchError(
        f"model.name={name!r} is unknown; choose {', '.join(MODELS)}, or set model._target_ to a function"
    )


def check_model(cfg: DictConfig) -> None:
    """Check the ``model/`` options without building anything (a one-line error names the option)."""
    from mtbench.options import check_bool, check_int, check_str

    name = cfg.get("name")
    if cfg.get("_target_"):
        if not name:
            raise MtbenchError(
                f"model._target_={cfg._target_!r} needs a model.name too (what metrics.json and the tables call the model)"
            )
        _target(cfg)  # importable and callable; its options are its own
    elif name == "small_cnn":
        check_int("model.width", cfg.get("width"), minimum=1)
        check_int("model.rep_dim", cfg.get("rep_dim"), minimum=1)
    elif name in ("resnet18", "resnet50"):
        check_bool("model.small_input", cfg.get("small_input", True))
        check_str("model.weights", cfg.get("weights"), optional=True)
        check_int("model.input_size", cfg.get("input_size"), minimum=1, optional=True)
    elif name == "kurin_resnet18":
        from mtbench.options import check_number

        check_int("model.pool", cfg.get("pool"), minimum=1)
        check_int("model.input_size", cfg.get("input_size"), minimum=8 * int(cfg.get("pool")))
        for key in ("stem_dropout", "block_dropout", "rep_dropout"):
            check_number(f"model.{key}", cfg.get(key), minimum=0, maximum=1, max_open=True)
    elif name == "famo_cnn":
        check_int("model.width", cfg.get("width", 64), minimum=1)
    elif name in DENSE_MODELS:
        check_dense_model(cfg)
    else:
        raise MtbenchError(
            f"model.name={name!r} is unknown; choose {', '.join(MODELS)}, or set model._target_ to a function"
        )


def build_model(cfg: DictConfig, num_tasks: int | None = None, in_channels: int = 3, task=None) -> MultiTaskModel:
    """Trunk from ``cfg``; heads from the task (``task.make_heads``, else built from
    ``task.head_spec()``), or ``num_tasks`` linear heads. A dense model (``model=segnet``,
    ``segnet_mtan``, ``resnet50_deeplab``, ``small_segnet``) gets one decoder head per entry of
    the dense task's ``head_spec().outputs`` (:func:`mtbench.models.dense.build_dense_model`)."""
    if is_dense_model(cfg):
        from mtbench.models.dense import build_dense_model

        if task is None:
            raise MtbenchError(
                f"model={cfg.name} is a dense-prediction model and needs its task (build_model(cfg, task=task))"
            )
        return build_dense_model(cfg, task, in_channels)
    if task is not None and getattr(task, "dense", False) and cfg.get("_target_"):
        from mtbench.models.dense import DenseHeads, DenseModel
        from mtbench.models.segnet import ConvHead

        trunk, dim = build_trunk(cfg, in_channels)  # a map [B, dim, H', W']: SegNet's conv heads read it
        heads = DenseHeads(dim, dict(task.head_spec().outputs), ConvHead)
        return DenseModel(trunk, heads, dim, shared_representation=getattr(trunk, "shared_representation", True))
    if task is not None and getattr(task, "dense", False):
        raise MtbenchError(
            f"model={cfg.name} gives one feature vector per image, but this task predicts per-pixel maps; "
            f"choose model={' or model='.join(DENSE_MODELS)}"
        )
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

"""torchvision ResNets with their weights loaded: from a torchvision weights name (downloaded
and cached by torchvision) or from a local ``state_dict`` file, with one-line errors for a file
that is not one. Used by the ResNet trunks (``models/resnet.py``) and by the CIFAR-100 transfer
task, whose frozen pretrained network makes the distillation targets (``data/cifar100.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mtbench.errors import MtbenchError

__all__ = ["load_resnet"]


def load_resnet(arch: str = "resnet18", weights: str | None = None) -> nn.Module:
    """The whole torchvision ResNet, classifier included, with ``weights`` loaded (see
    :func:`resnet_trunk`; None = random init)."""
    import torchvision

    try:
        builder = getattr(torchvision.models, arch)
    except AttributeError:
        raise MtbenchError(f"model.arch={arch!r} is not a torchvision model; try resnet18 or resnet50") from None
    net = builder(weights=None)
    if weights:
        _load_weights(net, arch, str(weights))
    return net


def _load_weights(net: nn.Module, arch: str, weights: str) -> None:
    path = Path(weights).expanduser()
    source = f"{arch} {weights}"
    if path.suffix in {".pt", ".pth", ".bin"} or path.exists() or "/" in weights or os.sep in weights:
        if not path.is_file():
            raise MtbenchError(
                f"model.weights: file {path} does not exist; give a state_dict file or a torchvision weights name such as IMAGENET1K_V1"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, or not a torch file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MtbenchError(
                f"model.weights: file {path} is not a readable state_dict ({reason[:200]}); save one with torch.save(model.state_dict(), path)"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise MtbenchError(
                f"model.weights: file {path} holds a {type(state).__name__}, not a state_dict (a dict of tensors)"
            )
        if state and all(str(k).startswith("module.") for k in state):  # saved from DataParallel
            state = {str(k)[len("module.") :]: v for k, v in state.items()}
        source = f"file {path}"
    else:
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        try:
            state = enum[weights].get_state_dict(progress=True)
        except KeyError:
            names = ", ".join(w.name for w in enum)
            raise MtbenchError(
                f"model.weights={weights!r} is not a weights name of {arch}; choose one of {names} or give a file path"
            ) from None
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [
        f"{k}: {tuple(getattr(state[k], 'shape', ()))} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    if missing or unexpected or bad:

        def some(items: list[str]) -> str:
            return "[" + ", ".join(items[:5]) + (f", ... {len(items) - 5} more" if len(items) > 5 else "") + "]"

        raise MtbenchError(
            f"model.weights: {source} is not a {arch} state_dict "
            f"({len(missing)} missing keys {some(missing)}, {len(unexpected)} unexpected keys {some([str(k) for k in unexpected])}, "
            f"{len(bad)} mismatched shapes {some(bad)})"
        )
    net.load_state_dict(state)

"""torchvision ResNet trunks: the pooled features (512-d for ResNet-18) are the representation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtbench import MtbenchError


def resnet_trunk(arch: str = "resnet18", small_input: bool = True, weights: str | None = None) -> tuple[nn.Module, int]:
    """Build a torchvision ResNet without its classifier; return (trunk, feature_dim).

    ``small_input`` replaces the 7x7 stride-2 stem and the max-pool by a 3x3 stride-1 stem,
    the usual adaptation for 32x32-64x64 images. ``weights``: None (random init), a torchvision
    weights name such as ``IMAGENET1K_V1`` (downloaded and cached by torchvision), or a path to
    a local ``state_dict`` file.
    """
    import torchvision

    try:
        builder = getattr(torchvision.models, arch)
    except AttributeError:
        raise MtbenchError(f"model.arch={arch!r} is not a torchvision model; try resnet18 or resnet50") from None
    net = builder(weights=None)
    if weights:
        _load_weights(net, arch, str(weights))
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_input:
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net, dim


def _load_weights(net: nn.Module, arch: str, weights: str) -> None:
    path = Path(weights).expanduser()
    if path.suffix in {".pt", ".pth", ".bin"} or path.exists():
        if not path.is_file():
            raise MtbenchError(f"model.weights: file {path} does not exist; give a state_dict file or a torchvision weights name such as IMAGENET1K_V1")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    else:
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        try:
            state = enum[weights].get_state_dict(progress=True)
        except KeyError:
            names = ", ".join(w.name for w in enum)
            raise MtbenchError(f"model.weights={weights!r} is not a weights name of {arch}; choose one of {names} or give a file path") from None
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or bad:
        raise MtbenchError(
            f"model.weights={weights}: not a {arch} state_dict "
            f"(missing keys: {missing[:5]}, unexpected keys: {unexpected[:5]}, mismatched shapes: {bad[:5]})"
        )
    net.load_state_dict(state)

"""torchvision ResNet trunks: the pooled features (512-d for ResNet-18) are the representation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mtbench import MtbenchError


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


class InputResize(nn.Module):
    """Resize the input batch to ``size`` x ``size`` (bilinear) before the wrapped network;
    a batch already at that size passes unchanged."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net = net
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def resnet_trunk(
    arch: str = "resnet18", small_input: bool = True, weights: str | None = None, input_size: int | None = None
) -> tuple[nn.Module, int]:
    """Build a torchvision ResNet without its classifier; return (trunk, feature_dim).

    ``small_input`` replaces the 7x7 stride-2 stem and the max-pool by a 3x3 stride-1 stem,
    the usual adaptation for 32x32-64x64 images. ``weights``: None (random init), a torchvision
    weights name such as ``IMAGENET1K_V1`` (downloaded and cached by torchvision), or a path to
    a local ``state_dict`` file. ``input_size``: resize inputs to this side first (None: as given).
    """
    net = load_resnet(arch, weights)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_input:
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    if input_size:
        return InputResize(net, int(input_size)), dim
    return net, dim


def _load_weights(net: nn.Module, arch: str, weights: str) -> None:
    path = Path(weights).expanduser()
    source = f"{arch} {weights}"
    if path.suffix in {".pt", ".pth", ".bin"} or path.exists() or "/" in weights or os.sep in weights:
        if not path.is_file():
            raise MtbenchError(f"model.weights: file {path} does not exist; give a state_dict file or a torchvision weights name such as IMAGENET1K_V1")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt, truncated, or not a torch file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MtbenchError(f"model.weights: file {path} is not a readable state_dict ({reason[:200]}); save one with torch.save(model.state_dict(), path)") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise MtbenchError(f"model.weights: file {path} holds a {type(state).__name__}, not a state_dict (a dict of tensors)")
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
            raise MtbenchError(f"model.weights={weights!r} is not a weights name of {arch}; choose one of {names} or give a file path") from None
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

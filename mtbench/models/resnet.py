"""torchvision ResNet trunks: the pooled features (512-d for ResNet-18) are the representation."""

from __future__ import annotations

import torch
from torch import nn

from mtbench.pretrained import _load_weights, load_resnet  # noqa: F401 - re-exported


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

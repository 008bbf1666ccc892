"""A small convolutional trunk for the embedded 32x32 task."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int, pool: bool, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class SmallCNN(nn.Sequential):
    """4 conv blocks (width, 2w, 4w, 4w channels; a 5x5 stride-2 stem, then two max-pools),
    global average pooling, then a linear layer + ReLU to ``rep_dim`` features: the shared
    representation [B, rep_dim]. The strided stem keeps a 32x32 step cheap on a CPU.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, rep_dim: int = 128):
        w = width
        super().__init__(
            *_block(in_channels, w, pool=False, kernel=5, stride=2),
            *_block(w, 2 * w, pool=True),
            *_block(2 * w, 4 * w, pool=True),
            *_block(4 * w, 4 * w, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, rep_dim),
            nn.ReLU(inplace=True),
        )
        self.rep_dim = rep_dim

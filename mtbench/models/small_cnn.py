"""A small convolutional trunk for the embedded 32x32 task."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class SmallCNN(nn.Sequential):
    """4 conv blocks (width, 2w, 4w, 4w channels; 3 max-pools), global average pooling,
    then a linear layer + ReLU to ``rep_dim`` features: the shared representation [B, rep_dim].
    """

    def __init__(self, in_channels: int = 3, width: int = 32, rep_dim: int = 256):
        w = width
        super().__init__(
            *_block(in_channels, w, pool=True),
            *_block(w, 2 * w, pool=True),
            *_block(2 * w, 4 * w, pool=True),
            *_block(4 * w, 4 * w, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, rep_dim),
            nn.ReLU(inplace=True),
        )
        self.rep_dim = rep_dim

"""Trunks of published CelebA setups (``experiment=kurin_celeba``, ``experiment=famo_celeba``).

- :class:`KurinResNet18` (``model=kurin_resnet18``): the CIFAR-style ResNet-18 of Kurin et al.
  2022 (``supervised_experiments/models/multi_faces_resnet.py`` of their code, itself from the
  MGDA code of Sener & Koltun 2018): a 3x3 stride-1 stem, four stages of two basic blocks,
  ``avg_pool2d(4)`` and a flatten; on 64x64 inputs the final 8x8 map pools to 2x2, a 2048-d
  representation. Dropout2d 0.25 after the stem, Dropout2d 0.5 inside every block (after its
  first convolution), dropout 0.5 on the representation.
- :class:`FamoCNN` (``model=famo_cnn``): the 9-layer network of Liu et al. 2023 (FAMO,
  ``experiments/celeba/models.py``): seven 3x3 convolutions with BatchNorm and ReLU (64, 128,
  128, 256, 256, 512, 512 channels, max-pools after the 1st, 3rd and 5th), global average pooling
  and two 512-unit linear layers with BatchNorm and ReLU: a 512-d representation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class KurinResNet18(nn.Module):
    """CIFAR-style ResNet-18 -> ``avg_pool2d(pool)`` -> flatten: ``512 * (input_size // (8 * pool))**2`` features."""

    def __init__(self, in_channels: int = 3, input_size: int = 64, stem_dropout: float = 0.25, block_dropout: float = 0.5,
                 rep_dropout: float = 0.5, pool: int = 4, width: int = 64):  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stem_dropout = nn.Dropout2d(stem_dropout) if stem_dropout > 0 else nn.Identity()
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [_Block(cin, cout, stride, block_dropout), _Block(cout, cout, 1, block_dropout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = int(pool)
        side = input_size // 8 // self.pool
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for pool {pool}")
        self.input_size = int(input_size)
        self.rep_dim = cin * side * side
        self.rep_dropout = nn.Dropout(rep_dropout) if rep_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_dropout(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(self.layers(out), self.pool)
        return self.rep_dropout(out.flatten(1))


class FamoCNN(nn.Module):
    """FAMO's CelebA network without its heads: a 512-d representation."""

    rep_dim = 512

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.net = nn.Sequential(
            *conv(in_channels, w), nn.MaxPool2d(2, 2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2, 2),
            *conv(2 * w, 4 * w), *conv(4 * w, 4 * w), nn.MaxPool2d(2, 2),
            *conv(4 * w, 8 * w), *conv(8 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8 * w, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

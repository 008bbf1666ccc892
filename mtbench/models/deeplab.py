"""ResNet-50 dilated trunk with DeepLab-v3 ASPP heads: LibMTL's NYUv2 model (their
``examples/nyu``: ``resnet_dilated('resnet50')`` shared, one ``DeepLabHead(2048, C_t)`` per task,
predictions upsampled bilinearly, ``align_corners=True``, to the input's size).

The trunk is torchvision's ResNet-50 with the strides of its last two stages replaced by
dilation (``replace_stride_with_dilation=[False, True, True]``: output stride 8, the same
convolutions as LibMTL's ``ResnetDilated(dilate_scale=8)``), without the pooling and the
classifier: its layer4 output [B, 2048, H/8, W/8] is the shared representation. The heads are
torchvision's ``DeepLabHead`` (ASPP with rates 12, 24, 36 and image pooling, 256 channels, a
3x3 conv-BN-ReLU, a 1x1 convolution to the task's channels), which is what LibMTL's ``aspp.py``
builds. ImageNet weights come from a local ``state_dict`` file (``model.weights``), loaded as
for ``model=resnet50``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DilatedResNet50", "aspp_head"]


class DilatedResNet50(nn.Module):
    """torchvision's ResNet-50, output stride 8 (dilated layer3 and layer4), no pooling or
    classifier: ``forward(x)`` is layer4's output [B, 2048, ceil(H/8), ceil(W/8)]."""

    out_channels = 2048

    def __init__(self, weights: str | None = None):
        super().__init__()
        import torchvision

        from mtbench.pretrained import _load_weights

        net = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        if weights:
            _load_weights(net, "resnet50", str(weights))  # the dilation changes no shape: the ImageNet state_dict fits
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def aspp_head(in_channels: int, out_channels: int) -> nn.Module:
    """DeepLab-v3's head (torchvision's ``DeepLabHead``: ASPP rates 12, 24, 36)."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return DeepLabHead(in_channels, out_channels)

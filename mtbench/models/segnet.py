"""SegNet encoder-decoder trunks for dense prediction (NYUv2, Cityscapes).

The architecture of Liu et al. 2019 (MTAN, "End-to-End Multi-Task Learning with Attention"),
``im2im_pred``'s SegNet, as used by the CAGrad, Nash-MTL and FAMO experiments: with filters
f = [64, 128, 256, 512, 512] (one per level), every block a 3x3 convolution, BatchNorm and
ReLU ("conv-BN-ReLU"):

* encoder level i: a block to f[i] channels, then 1 (levels 0 and 1) or 2 (deeper levels)
  blocks at f[i], then a 2x2 max-pool that keeps its indices;
* decoder level i (deepest first): a 2x2 max-unpool with level i's indices, a block from
  f[i] to f[i-1] (f[0] at level 0), then 1 (levels 0 and 1) or 2 blocks at that width.

The last decoder block's output [B, f[0], H, W] (at the input's resolution) is the shared
representation of the "split" model; each task's head is a 3x3 convolution (f[0] -> f[0])
and a 1x1 convolution to the task's channels (:class:`ConvHead`). ``small_segnet`` is the
same network with few channels and two levels (``filters: [8, 16]``).

Modules are registered in the order the forward pass runs them, so the trunk's last layer
with a weight (GradNorm's "last shared layer") is the final decoder convolution.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SegNet", "ConvHead", "conv_block", "segnet_init"]


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution (padding 1, with bias, as in the reference), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _repeat(width: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[conv_block(width, width) for _ in range(n)])


def segnet_init(module: nn.Module) -> None:
    """The reference initialisation: Xavier-normal convolution and linear weights, zero biases,
    BatchNorm scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNet(nn.Module):
    """The shared SegNet (see the module docstring): ``forward(x)`` is the last decoder
    feature map [B, filters[0], H, W]; :meth:`features` gives the intermediate maps too
    (what MTAN's attention modules read).

    Any input size works: each unpooling restores the size its pooling saw (the reference
    sizes, 288x384 and 128x256, divide by 2^levels anyway)."""

    def __init__(self, in_channels: int = 3, filters: tuple[int, ...] | list[int] = (64, 128, 256, 512, 512)):
        super().__init__()
        f = [int(c) for c in filters]
        if not f:
            raise ValueError("SegNet needs at least one level")
        self.filters = f
        self.levels = len(f)
        depth = [1 if i < 2 else 2 for i in range(self.levels)]  # extra blocks per level
        #: encoder level i: (first block, the other blocks)
        self.enc_first = nn.ModuleList()
        self.enc_rest = nn.ModuleList()
        for i, width in enumerate(f):
            self.enc_first.append(conv_block(in_channels if i == 0 else f[i - 1], width))
            self.enc_rest.append(_repeat(width, depth[i]))
        #: decoder, deepest level first: (first block, the other blocks)
        self.dec_first = nn.ModuleList()
        self.dec_rest = nn.ModuleList()
        for i in reversed(range(self.levels)):
            out = f[i - 1] if i > 0 else f[0]
            self.dec_first.append(conv_block(f[i], out))
            self.dec_rest.append(_repeat(out, depth[i]))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        segnet_init(self)

    @property
    def out_channels(self) -> int:
        return self.filters[0]

    def features(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The maps of one forward pass, each a list over levels (encoder: level 0 first;
        decoder: in forward order, the deepest level first):

        ``enc_first`` (after a level's first block), ``enc_out`` (after its last block,
        before pooling), ``up`` (the decoder's unpooled input at a level), ``dec_out``
        (after the decoder level's last block; ``dec_out[-1]`` is the output)."""
        enc_first, enc_out, indices = [], [], []
        h = x
        for first, rest in zip(self.enc_first, self.enc_rest):
            a = first(h)
            b = rest(a)
            enc_first.append(a)
            enc_out.append(b)
            h, idx = self.pool(b)
            indices.append(idx)
        up, dec_out = [], []
        for j, (first, rest) in enumerate(zip(self.dec_first, self.dec_rest)):
            level = self.levels - 1 - j
            u = self.unpool(h, indices[level], output_size=enc_out[level].shape[-2:])
            h = rest(first(u))
            up.append(u)
            dec_out.append(h)
        return {"enc_first": enc_first, "enc_out": enc_out, "up": up, "dec_out": dec_out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        h = x
        for first, rest in zip(self.enc_first, self.enc_rest):
            h = rest(first(h))
            sizes.append(h.shape[-2:])
            h, idx = self.pool(h)
            indices.append(idx)
        for j, (first, rest) in enumerate(zip(self.dec_first, self.dec_rest)):
            level = self.levels - 1 - j
            h = rest(first(self.unpool(h, indices[level], output_size=sizes[level])))
        return h


class ConvHead(nn.Sequential):
    """A SegNet task head: a 3x3 convolution (``in_channels`` -> ``in_channels``) then a 1x1
    convolution to ``out_channels`` (the reference's ``pred_task`` layers: no BatchNorm or
    activation between them)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.Conv2d(in_channels, out_channels, 1))
        segnet_init(self)

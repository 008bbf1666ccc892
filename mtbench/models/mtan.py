"""MTAN: the shared SegNet with one soft-attention network per task (Liu et al. 2019,
"End-to-End Multi-Task Learning with Attention", Sec. 3 and Fig. 2; their ``im2im_pred``
SegNet-MTAN, the model of the Nash-MTL and FAMO tables).

At every encoder and decoder level, task t's attention module (1x1 conv, BN, ReLU, 1x1 conv,
BN, sigmoid) gives a mask that multiplies the shared SegNet's features. It reads those features
and the task's attended features of the previous level, passed through a block shared by every
task (``enc_att_block`` then a 2x2 max-pool; ``dec_att_block`` after a bilinear 2x upsampling).

There is no single shared representation: task t's head reads its own attended map, so ``rep``
is the T maps concatenated along channels, [B, T * f[0], H, W] (task t: channels t*f[0] ..
(t+1)*f[0]), ``shared_representation = False``, and combiners work at ``level=params``.
``shared_parameters()`` are the SegNet, the shared attention blocks and the per-task attention
modules; only the heads are ``head_parameters()`` (Nash-MTL's and FAMO's choice; CAGrad's
``shared_modules`` leave the per-task attention out: docs/tasks/dense-models.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtbench.models.segnet import SegNet, conv_block, segnet_init

__all__ = ["SegNetMTAN", "attention_block"]


def attention_block(cin: int, mid: int, cout: int) -> nn.Sequential:
    """MTAN's attention module: 1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid (a mask in (0, 1))."""
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1),
        nn.BatchNorm2d(cout),
        nn.Sigmoid(),
    )


class SegNetMTAN(nn.Module):
    """The MTAN trunk for ``num_tasks`` tasks: ``forward(x)`` is the T attended feature maps of
    the last decoder level concatenated along channels, [B, T * filters[0], H, W].

    Modules: ``enc_att`` / ``dec_att`` (per task, one attention module per level), the shared
    ``enc_att_block`` / ``dec_att_block``, then the shared ``segnet`` (registered last, so the
    trunk's last layer with a weight is the SegNet's final decoder convolution)."""

    shared_representation = False

    def __init__(
        self, num_tasks: int, in_channels: int = 3, filters: tuple[int, ...] | list[int] = (64, 128, 256, 512, 512)
    ):
        super().__init__()
        f = [int(c) for c in filters]
        if len(f) < 2:
            raise ValueError("SegNet-MTAN needs at least two levels")
        L = len(f)
        self.num_tasks = int(num_tasks)
        self.filters = f
        # per task: encoder level i reads [shared enc_first_i, previous attended] (level 0: the
        # shared map alone); decoder level i (i = 0 the shallowest) reads [the unpooled shared
        # input of that level, dec_att_block's output]
        self.enc_att = nn.ModuleList()
        self.dec_att = nn.ModuleList()
        for _ in range(self.num_tasks):
            enc = [attention_block(f[0], f[0], f[0])] + [attention_block(2 * f[i], f[i], f[i]) for i in range(1, L)]
            dec = [attention_block(2 * f[0], f[0], f[0])] + [
                attention_block(f[i] + f[i - 1], f[i - 1], f[i - 1]) for i in range(1, L)
            ]
            self.enc_att.append(nn.ModuleList(enc))
            self.dec_att.append(nn.ModuleList(dec))
        # shared between tasks: encoder level i -> the next level's width (the last keeps it);
        # decoder level i -> f[i - 1] (level 0 keeps f[0])
        self.enc_att_block = nn.ModuleList([conv_block(f[i], f[i + 1] if i + 1 < L else f[i]) for i in range(L)])
        self.dec_att_block = nn.ModuleList([conv_block(f[i], f[i - 1] if i > 0 else f[0]) for i in range(L)])
        segnet_init(self)
        self.segnet = SegNet(in_channels, f)

    @property
    def out_channels(self) -> int:
        """Channels of one task's attended map (the ``rep`` has ``num_tasks`` times as many)."""
        return self.filters[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.segnet.features(x)
        enc_first, enc_out, up, dec_out = feats["enc_first"], feats["enc_out"], feats["up"], feats["dec_out"]
        L = len(self.filters)
        outs = []
        for t in range(self.num_tasks):
            enc_att, dec_att = self.enc_att[t], self.dec_att[t]
            h = None
            for i in range(L):
                inp = enc_first[i] if i == 0 else torch.cat((enc_first[i], h), dim=1)
                attended = enc_att[i](inp) * enc_out[i]
                h = F.max_pool2d(self.enc_att_block[i](attended), kernel_size=2, stride=2)
            for j in range(L):
                level = L - 1 - j
                size = up[j].shape[-2:]
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=True)
                h = self.dec_att_block[level](h)
                mask = dec_att[level](torch.cat((up[j], h), dim=1))
                h = mask * dec_out[j]
            outs.append(h)
        return torch.cat(outs, dim=1)

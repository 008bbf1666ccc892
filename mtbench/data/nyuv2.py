"""NYUv2 (MTAN's preprocessing): 13-class segmentation, depth and surface normals at 288 x 384.

``task=nyuv2 data.root=ROOT`` with ``ROOT/{train,val}/{image,label,depth,normal}/<i>.npy``
(795 training and 654 test images); see :mod:`mtbench.data.dense` and docs/tasks/nyuv2.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mtbench.data.base import TaskSpec
from mtbench.data.dense import NYUV2, DenseTask, build_dense
from mtbench.data.dense import check_options as _check

__all__ = ["NYUV2", "build_nyuv2", "check_options"]


def build_nyuv2(cfg: DictConfig) -> DenseTask:
    return build_dense(NYUV2, cfg)


def check_options(cfg: DictConfig) -> TaskSpec:
    return _check(NYUV2, cfg)

"""Cityscapes (MTAN's preprocessing): 7-class (or 19-class) segmentation and depth at 128 x 256.

``task=cityscapes data.root=ROOT`` with ``ROOT/{train,val}/{image,label_7,depth}/<i>.npy``
(``label_19`` too for ``task.classes=19``; 2975 training and 500 test images); see
:mod:`mtbench.data.dense` and docs/tasks/cityscapes.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mtbench.data.base import TaskSpec
from mtbench.data.dense import CITYSCAPES, DenseTask, build_dense
from mtbench.data.dense import check_options as _check

__all__ = ["CITYSCAPES", "build_cityscapes", "check_options"]


def build_cityscapes(cfg: DictConfig) -> DenseTask:
    return build_dense(CITYSCAPES, cfg)


def check_options(cfg: DictConfig) -> TaskSpec:
    return _check(CITYSCAPES, cfg)

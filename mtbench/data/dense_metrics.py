"""Metrics of dense prediction (NYUv2, Cityscapes): segmentation, depth, surface normals.

:class:`DenseMetrics` accumulates batch by batch, so evaluating a split holds one batch's
predictions plus a few small accumulators. The definitions, and how the two modes differ, are
in docs/tasks/nyuv2.md ("Metrics").

``task.metrics: exact`` (the default) is exact over every valid pixel of the split:

- segmentation: one ``C x C`` int64 confusion matrix ``M`` (rows target, columns argmax of the
  logits; targets outside ``[0, C)``, e.g. ``-1``, ignored). ``seg_pixacc = 100 trace(M) / sum(M)``,
  ``IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc)``, ``seg_miou`` = 100 x the mean IoU over the
  classes whose union is not empty (a class neither labelled nor predicted is left out; one
  predicted but never labelled counts with 0).
- depth, over pixels whose target is not 0: ``depth_abs_err = sum |pred - target| / n``,
  ``depth_rel_err = sum |pred - target| / target / n``.
- normals, over targets not ``(0, 0, 0)``: the angle ``a = degrees(acos(clamp(<pred / |pred|,
  target>, -1, 1)))``; ``normal_mean``, and ``normal_within_{11,22,30}`` = 100 x the fraction of
  ``a`` strictly below 11.25, 22.5, 30, exact. ``normal_median`` comes from a histogram with bins
  of :data:`MEDIAN_BIN` degrees: the two middle order statistics' bin centres, averaged
  (``numpy.median``'s convention), within ``MEDIAN_BIN / 2`` of the exact median.

``task.metrics: paper`` follows the MTAN / CAGrad / Nash-MTL / FAMO scripts: the same confusion
matrix, but depth and normal statistics per evaluation batch, averaged over batches with equal
weight (so they depend on ``trainer.eval_batch_size``; the median is a mean of batch medians).
Valid normals there are those whose components do not sum to 0; a batch without a valid pixel
is skipped (the peers would give NaN).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MEDIAN_BIN",
    "METRICS",
    "DenseMetrics",
    "confusion_matrix",
    "depth_sums",
    "normal_angles",
    "segmentation_scores",
]

#: ``task.metrics``
METRICS = ("exact", "paper")

#: the width, in degrees, of the histogram bins the exact normal median is read from
MEDIAN_BIN = 1e-4
_BINS = int(round(180.0 / MEDIAN_BIN)) + 1


def confusion_matrix(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``C x C`` int64 counts (rows target, columns ``argmax`` of ``logits`` [B, C, H, W]) over
    the pixels whose target is in ``[0, C)``."""
    pred = logits.argmax(1).reshape(-1)
    target = target.reshape(-1).to(pred.device)
    keep = (target >= 0) & (target < classes)
    index = target[keep].long() * classes + pred[keep]
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).cpu()


def segmentation_scores(matrix: torch.Tensor) -> tuple[float, float]:
    """(mIoU %, pixel accuracy %) of a confusion matrix; classes with an empty union are left
    out of the mean (NaN when the matrix is empty)."""
    m = matrix.to(torch.float64)
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    total = m.sum()
    miou = float((tp[present] / union[present]).mean()) * 100 if bool(present.any()) else math.nan
    acc = float(tp.sum() / total) * 100 if total > 0 else math.nan
    return miou, acc


def depth_sums(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float, int]:
    """(sum of |pred - target|, sum of |pred - target| / target, valid pixels) over the pixels
    whose target is not 0; ``pred`` and ``target`` [B, 1, H, W] (float64 sums)."""
    target = target.to(pred.device)
    valid = target != 0
    diff = (pred.float() - target.float()).abs()[valid].double()
    t = target[valid].double()
    return float(diff.sum()), float((diff / t).sum()), int(valid.sum())


def normal_angles(pred: torch.Tensor, target: torch.Tensor, mask: str = "any") -> torch.Tensor:
    """The angles (degrees, float32, as the peers compute them) between the L2-normalised
    ``pred`` and ``target`` [B, 3, H, W] at the valid pixels: ``mask="any"``: a component is not
    0; ``mask="sum"``: the components do not sum to 0 (the peers' mask)."""
    target = target.to(pred.device).float()
    p = F.normalize(pred.float(), dim=1)
    valid = (target != 0).any(1) if mask == "any" else target.sum(1) != 0
    cos = (p * target).sum(1)[valid].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


class DenseMetrics:
    """Accumulates the metrics of the tasks ``names`` (``segmentation`` with ``classes``
    classes, ``depth``, ``normal``) over the batches of a split: :meth:`update` with each
    batch's outputs (dict of [B, C_t, H, W]) and labels (dict), then :meth:`compute`."""

    def __init__(self, names: list[str], classes: int = 0, mode: str = "exact"):
        if mode not in METRICS:
            raise ValueError(f"mode must be one of {METRICS}, got {mode!r}")
        self.names, self.classes, self.mode = list(names), int(classes), mode
        self.matrix = torch.zeros(self.classes, self.classes, dtype=torch.int64)
        self.depth = [0.0, 0.0, 0]  # exact: sums and count; paper: sums of batch values and batches
        self.normal_sum, self.normal_n = 0.0, 0
        self.within = [0, 0, 0]
        self.hist: torch.Tensor | None = None
        self.paper_normal = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.paper_batches = {"depth": 0, "normal": 0}

    def update(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            if "segmentation" in self.names:
                self.matrix += confusion_matrix(outputs["segmentation"], labels["segmentation"], self.classes)
            if "depth" in self.names:
                abs_sum, rel_sum, n = depth_sums(outputs["depth"], labels["depth"])
                if self.mode == "exact":
                    self.depth = [self.depth[0] + abs_sum, self.depth[1] + rel_sum, self.depth[2] + n]
                elif n > 0:
                    self.depth[0] += abs_sum / n
                    self.depth[1] += rel_sum / n
                    self.paper_batches["depth"] += 1
            if "normal" in self.names:
                self._update_normal(outputs["normal"], labels["normal"])

    def _update_normal(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        a = normal_angles(pred, target, mask="any" if self.mode == "exact" else "sum")
        if self.mode == "paper":
            if a.numel() == 0:
                return
            e = a.cpu().numpy()  # float32, as the peers' numpy statistics
            stats = (
                float(np.mean(e)),
                float(np.median(e)),
                *(float(np.mean(e < t)) for t in (11.25, 22.5, 30.0)),
            )
            self.paper_normal = [s + v for s, v in zip(self.paper_normal, stats)]
            self.paper_batches["normal"] += 1
            return
        self.normal_sum += float(a.double().sum())
        self.normal_n += int(a.numel())
        for k, t in enumerate((11.25, 22.5, 30.0)):
            self.within[k] += int((a < t).sum())
        index = torch.floor(a.double() / MEDIAN_BIN).long().clamp_(0, _BINS - 1)
        counts = torch.bincount(index, minlength=_BINS).cpu()
        self.hist = counts if self.hist is None else self.hist + counts

    def _median(self) -> float:
        if self.hist is None or self.normal_n == 0:
            return math.nan
        cum = torch.cumsum(self.hist, 0)
        n = self.normal_n
        lo = int(torch.searchsorted(cum, torch.tensor((n - 1) // 2), right=True))
        hi = int(torch.searchsorted(cum, torch.tensor(n // 2), right=True))
        return (lo + hi + 1) * MEDIAN_BIN / 2  # the mean of the two bins' centres

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if "segmentation" in self.names:
            out["seg_miou"], out["seg_pixacc"] = segmentation_scores(self.matrix)
        if "depth" in self.names:
            if self.mode == "exact":
                n = self.depth[2]
                out["depth_abs_err"] = self.depth[0] / n if n else math.nan
                out["depth_rel_err"] = self.depth[1] / n if n else math.nan
            else:
                b = self.paper_batches["depth"]
                out["depth_abs_err"] = self.depth[0] / b if b else math.nan
                out["depth_rel_err"] = self.depth[1] / b if b else math.nan
        if "normal" in self.names:
            keys = ("normal_mean", "normal_median", "normal_within_11", "normal_within_22", "normal_within_30")
            if self.mode == "exact":
                n = self.normal_n
                values = [
                    self.normal_sum / n if n else math.nan,
                    self._median(),
                    *(100.0 * w / n if n else math.nan for w in self.within),
                ]
            else:
                b = self.paper_batches["normal"]
                values = [v / b if b else math.nan for v in self.paper_normal]
                values[2:] = [100.0 * v for v in values[2:]]
            out.update(zip(keys, values))
        return out


def evaluate_dense(batches: Any, names: list[str], classes: int = 0, mode: str = "exact") -> dict[str, float]:
    """The metrics of an iterable of ``(outputs, labels)`` batches (a convenience for tests and
    scripts)."""
    acc = DenseMetrics(names, classes, mode)
    for outputs, labels in batches:
        acc.update(outputs, labels)
    return acc.compute()

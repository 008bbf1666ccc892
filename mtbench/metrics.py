"""Metrics for binary-attribute tasks (CelebA-style multi-label data).

Inputs
------
``scores``  float tensor of shape ``[N, T]``: for each of ``N`` examples and
            ``T`` binary attributes, the predicted probability that the
            attribute is present (typically ``sigmoid(logit)``, in ``[0, 1]``).
``labels``  tensor of shape ``[N, T]`` holding only 0/1 values; any dtype
            (bool, integer or floating point) is accepted.

Both may live on any device (CPU or CUDA); the computation runs on the device
of ``scores`` and every tensor result is returned on the CPU as ``float64``.
NumPy arrays are accepted too and converted with :func:`torch.as_tensor`.
All metrics are computed column-wise, vectorised over the ``T`` attributes.

Definitions (for one attribute, i.e. one column)
-----------------------------------------------
Threshold rule.  A decision threshold ``t`` predicts "positive" for an example
    iff ``score >= t``.  The comparison is inclusive, so a score of exactly
    ``0.5`` (what ``sigmoid(0)`` gives) counts as positive at ``t = 0.5``.

Error rate at threshold ``t``.  The fraction of the ``N`` examples whose
    prediction ``score >= t`` disagrees with the label::

        error(t) = (FP(t) + FN(t)) / N           in [0, 1]

Max F1.  With ``P`` the number of positive labels and ``TP(t)``, ``FP(t)`` the
    true / false positives at threshold ``t``::

        F1(t) = 2 TP(t) / (2 TP(t) + FP(t) + FN(t))
              = 2 TP(t) / (TP(t) + FP(t) + P)

    and ``max_f1 = max over t of F1(t)``, where ``t`` ranges over *every*
    distinct score value of the column (each gives a different set of predicted
    positives) plus "predict nothing" (``t`` above the largest score), whose
    F1 is 0.  This is the exact maximum over all possible thresholds, not an
    approximation on a grid.  Examples with tied scores are always on the same
    side of any threshold, so a tie can never be split.

    Zero-division convention (that of scikit-learn's ``zero_division=0``):
    when the denominator ``2 TP + FP + FN`` is 0, F1 is taken as 0.  As a
    consequence an attribute with **no positive labels** in the split has
    ``max_f1 = 0`` (``TP`` is always 0 there).  An attribute whose labels are
    **all positive** reaches ``max_f1 = 1`` at the lowest threshold (predict
    every example positive).

Algorithm for max F1.  Each column is sorted once by descending score; the
    cumulative sum of the sorted labels gives ``TP`` when the top ``k``
    examples are predicted positive, and ``TP + FP = k``.  F1 is evaluated
    (in float64, from exact integer counts) only at positions ``k`` that end
    a run of tied scores, which are exactly the distinct thresholds.  Cost:
    one ``O(N log N)`` sort per column, all columns at once.

Aggregates (:func:`binary_attribute_metrics`).  Per-attribute values are
    reported in percent, and the aggregates are plain (unweighted) means over
    attributes::

        error_rate = 100 * mean_j error_j(0.5)
        max_f1     = 100 * mean_j max_f1_j
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["error_rates", "max_f1_scores", "binary_attribute_metrics"]


def _prepare(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate inputs; return ``(scores, labels_bool)`` on the scores' device."""
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels)
    if scores.dim() != 2:
        raise ValueError(
            f"scores must be a 2-D [N, T] tensor, got shape {tuple(scores.shape)}"
        )
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match scores shape "
            f"{tuple(scores.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores/labels must contain at least one example (N >= 1)")
    if scores.is_complex() or labels.is_complex():
        raise ValueError("scores and labels must be real-valued")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN values")
    labels = labels.to(scores.device)
    if labels.dtype != torch.bool:
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError("labels must contain only 0/1 values")
        labels = labels != 0
    return scores, labels


def error_rates(scores: Any, labels: Any, threshold: float = 0.5) -> torch.Tensor:
    """Per-attribute error fraction at a fixed threshold.

    An example is predicted positive iff ``score >= threshold``.

    Returns a CPU ``float64`` tensor of shape ``[T]`` with values in ``[0, 1]``:
    ``(FP + FN) / N`` for each attribute.
    """
    scores, labels = _prepare(scores, labels)
    wrong = (scores >= threshold) != labels
    return wrong.sum(dim=0).to(torch.float64).div_(scores.shape[0]).cpu()


def max_f1_scores(scores: Any, labels: Any) -> torch.Tensor:
    """Per-attribute F1 at the best decision threshold (exact).

    Every distinct score value is tried as a threshold (positive iff
    ``score >= t``), plus "predict nothing" (F1 = 0); tied scores always fall
    on the same side.  An attribute with no positives gets 0, one with only
    positives gets 1.

    Returns a CPU ``float64`` tensor of shape ``[T]`` with values in ``[0, 1]``.
    """
    scores, labels = _prepare(scores, labels)
    n = scores.shape[0]
    # Work on [T, N] rows: sorting along the contiguous last dimension is fastest.
    s = scores.t().contiguous()
    y = labels.t().contiguous()
    s_sorted, order = torch.sort(s, dim=1, descending=True)
    y_sorted = torch.gather(y, 1, order)

    tp = torch.cumsum(y_sorted, dim=1, dtype=torch.int64)  # [T, N], exact counts
    pos = tp[:, -1:]  # P per attribute, [T, 1]
    k = torch.arange(1, n + 1, device=s.device, dtype=torch.int64)  # TP + FP
    # F1 = 2 TP / (TP + FP + P); the denominator is >= 1 because k >= 1.
    f1 = (2 * tp).to(torch.float64) / (k + pos).to(torch.float64)

    # Only the last position of each run of equal scores is a real threshold.
    run_end = torch.ones_like(s_sorted, dtype=torch.bool)
    run_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    f1 = f1.masked_fill_(~run_end, 0.0)  # 0 is also the "predict nothing" value

    return f1.amax(dim=1).cpu()


def binary_attribute_metrics(
    scores: Any, labels: Any, names: Sequence[str] | None = None
) -> dict:
    """Summary metrics for ``T`` binary attributes.

    Returns a dict::

        {
          "error_rate": float,   # %, 100 * mean over attributes of error at 0.5
          "max_f1": float,       # %, 100 * mean over attributes of max F1
          "per_attribute": [     # one entry per attribute, in column order
             {"attribute": str,     # names[j], or "attr_<j>" when names is None
              "base_rate": float,   # fraction of positive labels, in [0, 1]
              "error": float,       # %, error rate at threshold 0.5
              "max_f1": float},     # %, max F1 over all thresholds
             ...
          ],
        }

    See the module docstring for the exact definitions and conventions.
    """
    scores, labels = _prepare(scores, labels)
    t = scores.shape[1]
    if names is None:
        names = [f"attr_{j}" for j in range(t)]
    else:
        names = [str(name) for name in names]
        if len(names) != t:
            raise ValueError(
                f"got {len(names)} attribute names for {t} attributes (columns)"
            )

    err = error_rates(scores, labels, threshold=0.5) * 100.0
    f1 = max_f1_scores(scores, labels) * 100.0
    base = labels.sum(dim=0).to(torch.float64).div_(scores.shape[0]).cpu()

    per_attribute = [
        {"attribute": name, "base_rate": b, "error": e, "max_f1": f}
        for name, b, e, f in zip(names, base.tolist(), err.tolist(), f1.tolist())
    ]
    return {
        "error_rate": float(err.mean()) if t else float("nan"),
        "max_f1": float(f1.mean()) if t else float("nan"),
        "per_attribute": per_attribute,
    }

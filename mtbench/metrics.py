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

    and, for comparing with papers that report them (``task.columns``)::

        mean_acc   = 100 * mean_j (1 - error_j(0.5))    (= 100 - error_rate)
        min_acc    = 100 * min_j  (1 - error_j(0.5))    (the worst attribute)
        mean_f1    = 100 * mean_j F1_j(0.5)             (F1 at the fixed threshold 0.5)

The all-positive floor of max F1.  Predicting every example positive is one of the thresholds
    max F1 tries, with ``TP = P``, ``FP = N - P``: ``F1 = 2P / (N + P) = 2p / (1 + p)`` for the
    base rate ``p = P / N``. So ``max_f1_j >= 2 p_j / (1 + p_j)`` for every attribute, and the
    mean max F1 of any model is at least the mean of that floor over the attributes (about 33 %
    with CelebA's 40 base rates). ``python -m mtbench.metrics f1-floor list_attr_celeba.txt``
    computes it from an attribute file (:func:`all_positive_f1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["error_rates", "f1_at_threshold", "max_f1_scores", "all_positive_f1", "binary_attribute_metrics"]


def _prepare(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate inputs; return ``(scores, labels_bool)`` on the scores' device."""
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels)
    if scores.dim() != 2:
        raise ValueError(f"scores must be a 2-D [N, T] tensor, got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match scores shape {tuple(scores.shape)}")
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


def f1_at_threshold(scores: Any, labels: Any, threshold: float = 0.5) -> torch.Tensor:
    """Per-attribute F1 at a fixed threshold (positive iff ``score >= threshold``):
    ``2 TP / (2 TP + FP + FN)``, 0 where that denominator is 0 (no positive label and no
    positive prediction). A CPU ``float64`` tensor of shape ``[T]`` in ``[0, 1]``."""
    scores, labels = _prepare(scores, labels)
    pred = scores >= threshold
    tp = (pred & labels).sum(dim=0).to(torch.float64)
    fp = (pred & ~labels).sum(dim=0).to(torch.float64)
    fn = (~pred & labels).sum(dim=0).to(torch.float64)
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(den)).cpu()


def all_positive_f1(base_rates: Any) -> torch.Tensor:
    """The F1 of predicting every example positive, ``2p / (1 + p)`` for each base rate ``p``:
    a lower bound of each attribute's max F1 (``float64``, in ``[0, 1]``)."""
    p = torch.as_tensor(base_rates, dtype=torch.float64)
    return 2 * p / (1 + p)


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


def binary_attribute_metrics(scores: Any, labels: Any, names: Sequence[str] | None = None) -> dict:
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
            raise ValueError(f"got {len(names)} attribute names for {t} attributes (columns)")

    err = error_rates(scores, labels, threshold=0.5) * 100.0
    f1 = max_f1_scores(scores, labels) * 100.0
    base = labels.sum(dim=0).to(torch.float64).div_(scores.shape[0]).cpu()

    acc = 100.0 - err
    f1_half = f1_at_threshold(scores, labels, threshold=0.5) * 100.0

    per_attribute = [
        {"attribute": name, "base_rate": b, "error": e, "max_f1": f}
        for name, b, e, f in zip(names, base.tolist(), err.tolist(), f1.tolist())
    ]
    return {
        "error_rate": float(err.mean()) if t else float("nan"),
        "max_f1": float(f1.mean()) if t else float("nan"),
        "mean_acc": float(acc.mean()) if t else float("nan"),
        "min_acc": float(acc.min()) if t else float("nan"),
        "mean_f1": float(f1_half.mean()) if t else float("nan"),
        "per_attribute": per_attribute,
    }


def f1_floor(attr_file: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(attribute names, base rates, all-positive F1) of a ``list_attr_celeba.txt`` (line 1: the
    image count, line 2: the names, then ``<file> v1 ... vT`` with each value -1 or 1). A
    malformed file is a one-line ``ValueError`` naming the line."""
    with open(attr_file, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if len(lines) < 3 or not lines[0].strip().isdigit():
        raise ValueError(
            f"{attr_file}: not a list_attr_celeba.txt (line 1: the image count, line 2: the attribute names, then one line per image)"
        )
    names = lines[1].split()
    rows = []
    for i, line in enumerate(lines[2:], start=3):
        values = line.split()[1:]
        if len(values) != len(names) or any(v not in ("-1", "1") for v in values):
            raise ValueError(f"{attr_file}, line {i}: expected a file name and {len(names)} values of -1 or 1")
        rows.append([v == "1" for v in values])
    base = torch.tensor(rows, dtype=torch.float64).mean(dim=0)
    return names, base, all_positive_f1(base)


def main(argv: list[str] | None = None) -> int:
    """``python -m mtbench.metrics f1-floor list_attr_celeba.txt``: the all-positive floor of
    the mean max F1 (each attribute's ``2p/(1+p)``, and their mean, in percent)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m mtbench.metrics", description="Metric facts computed from data files."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    floor = sub.add_parser(
        "f1-floor", help="the F1 of predicting every attribute present: a lower bound of the mean max F1"
    )
    floor.add_argument("attr_file", help="a list_attr_celeba.txt (CelebA's attribute file)")
    floor.add_argument("--per-attribute", action="store_true", help="one line per attribute too")
    args = parser.parse_args(argv)
    try:
        names, base, f1 = f1_floor(args.attr_file)
    except (ValueError, OSError) as e:
        print(f"mtbench: error: {e}", file=sys.stderr)
        return 2
    if args.per_attribute:
        for name, b, f in zip(names, base.tolist(), f1.tolist()):
            print(f"{name:<22} base rate {100 * b:6.2f} %  all-positive F1 {100 * f:6.2f}")
    print(
        f"mean all-positive F1 over {len(names)} attributes: {100 * float(f1.mean()):.2f} (every model's mean max F1 is at least this)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

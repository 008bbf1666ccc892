"""Metrics for binary-attribute tasks (CelebA-style multi-label data).

``scores`` is a float ``[N, T]`` tensor (or NumPy array) of predicted probabilities for ``N``
examples and ``T`` attributes; ``labels`` has the same shape and holds only 0/1 (any dtype). The
computation runs on the scores' device, column by column, vectorised over the attributes; every
tensor result comes back on the CPU as ``float64``.

For one attribute, threshold ``t`` predicts positive iff ``score >= t`` (inclusive: ``sigmoid(0)``
is positive at 0.5), and:

    error(t) = (FP(t) + FN(t)) / N
    F1(t)    = 2 TP(t) / (2 TP(t) + FP(t) + FN(t))  = 2 TP(t) / (TP(t) + FP(t) + P)

with F1 = 0 where the denominator is 0 (scikit-learn's ``zero_division=0``). ``max_f1`` is the
exact maximum of F1 over every distinct score plus "predict nothing" (F1 0): one sort per
column, F1 evaluated at the end of each run of tied scores, so a tie is never split. No
positive label gives ``max_f1 = 0``, all positive labels give 1.

:func:`binary_attribute_metrics` reports percent, with unweighted means over attributes:

    error_rate = 100 * mean_j error_j(0.5)
    max_f1     = 100 * mean_j max_f1_j
    mean_acc   = 100 * mean_j (1 - error_j(0.5))    (= 100 - error_rate)
    min_acc    = 100 * min_j  (1 - error_j(0.5))    (the worst attribute)
    mean_f1    = 100 * mean_j F1_j(0.5)

Predicting every example positive is one of the thresholds, so ``max_f1_j >= 2 p_j / (1 + p_j)``
for the base rate ``p_j`` (:func:`all_positive_f1`; ``python -m mtbench.metrics f1-floor
list_attr_celeba.txt`` gives the mean floor of an attribute file).
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

"""Tests for mtbench.metrics (hand-computed cases plus a brute-force reference)."""

import numpy as np
import pytest
import torch

from mtbench.metrics import binary_attribute_metrics, error_rates, max_f1_scores


def col(values):
    """A single-attribute [N, 1] tensor from a list."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


# --------------------------------------------------------------------------- #
# error_rates
# --------------------------------------------------------------------------- #
def test_error_rates_hand_case_with_score_exactly_half():
    scores = torch.tensor(
        [
            [0.5, 0.2],
            [0.49, 0.9],
            [0.7, 0.1],
            [0.0, 0.6],
        ]
    )
    labels = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 0]])
    # Column 0: predictions (score >= 0.5) = [1, 0, 1, 0]   (0.5 -> positive)
    #           labels                     = [1, 1, 0, 0]
    #           mistakes at rows 1 and 2 -> 2 / 4 = 0.5
    # Column 1: predictions = [0, 1, 0, 1], labels = [0, 1, 0, 0]
    #           mistake at row 3 -> 1 / 4 = 0.25
    err = error_rates(scores, labels)
    assert err.device.type == "cpu"
    assert err.shape == (2,)
    assert err.tolist() == [0.5, 0.25]


def test_error_rates_sigmoid_of_zero_is_positive():
    # sigmoid(0) == 0.5 exactly -> predicted positive -> correct for label 1.
    scores = torch.sigmoid(torch.zeros(3, 1))
    assert error_rates(scores, torch.ones(3, 1)).tolist() == [0.0]
    assert error_rates(scores, torch.zeros(3, 1)).tolist() == [1.0]


def test_error_rates_custom_threshold():
    scores = col([0.1, 0.3, 0.5, 0.7])
    labels = col([0, 1, 1, 1])
    # threshold 0.3: predictions [0, 1, 1, 1] -> no mistakes
    assert error_rates(scores, labels, threshold=0.3).tolist() == [0.0]
    # threshold 0.8: predictions [0, 0, 0, 0] -> three missed positives -> 3/4
    assert error_rates(scores, labels, threshold=0.8).tolist() == [0.75]


# --------------------------------------------------------------------------- #
# max_f1_scores: hand cases
# --------------------------------------------------------------------------- #
def test_max_f1_distinct_scores_hand_enumeration():
    scores = col([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = col([1, 0, 1, 1, 0, 0])
    # P = 3.  F1 = 2 TP / (k + P) when the top k are predicted positive.
    #   t=0.9: k=1 TP=1 -> 2/4 = 0.5
    #   t=0.8: k=2 TP=1 -> 2/5 = 0.4
    #   t=0.7: k=3 TP=2 -> 4/6 = 0.667
    #   t=0.6: k=4 TP=3 -> 6/7 = 0.857   <- best
    #   t=0.5: k=5 TP=3 -> 6/8 = 0.75
    #   t=0.4: k=6 TP=3 -> 6/9 = 0.667
    #   nothing predicted -> 0
    f1 = max_f1_scores(scores, labels)
    assert f1.dtype == torch.float64
    assert f1.device.type == "cpu"
    assert f1.item() == pytest.approx(6 / 7, abs=1e-12)


@pytest.mark.parametrize(
    "scores, labels",
    [
        # positive first inside the tie
        ([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0, 0]),
        # positive last inside the tie, shuffled input order
        ([0.5, 0.1, 0.5, 0.9, 0.5], [0, 0, 0, 1, 1]),
    ],
)
def test_max_f1_ties_are_never_split(scores, labels):
    # Sorted: 0.9 (pos) | 0.5 0.5 0.5 (one pos, two neg) | 0.1 (neg).  P = 2.
    #   t=0.9: k=1 TP=1 -> 2/(1+2) = 2/3
    #   t=0.5: k=4 TP=2 -> 4/(4+2) = 2/3
    #   t=0.1: k=5 TP=2 -> 4/(5+2) = 4/7
    #   exact max = 2/3.
    # Splitting the tie after its positive (k=2, TP=2) would give 4/4 = 1.
    f1 = max_f1_scores(col(scores), col(labels)).item()
    assert f1 == pytest.approx(2 / 3, abs=1e-12)


def test_max_f1_all_scores_tied():
    # One run of 4 equal scores, 1 positive: only threshold is "all in":
    #   k=4 TP=1 P=1 -> 2/(4+1) = 0.4.   (Splitting would allow 2/(1+1) = 1.)
    scores = col([0.5, 0.5, 0.5, 0.5])
    for labels in ([1, 0, 0, 0], [0, 0, 0, 1]):
        assert max_f1_scores(scores, col(labels)).item() == pytest.approx(0.4)


def test_max_f1_no_positives_is_zero():
    # TP = 0 at every threshold -> F1 = 0 (zero_division=0 convention).
    scores = torch.rand(10, 3)
    labels = torch.zeros(10, 3)
    assert max_f1_scores(scores, labels).tolist() == [0.0, 0.0, 0.0]


def test_max_f1_all_positives_is_one():
    # Lowest threshold predicts every example positive: TP=N, FP=0, FN=0 -> 1.
    scores = torch.rand(10, 3)
    labels = torch.ones(10, 3)
    assert max_f1_scores(scores, labels).tolist() == [1.0, 1.0, 1.0]


def test_max_f1_perfect_separation_is_one():
    scores = col([0.2, 0.95, 0.1, 0.8, 0.81, 0.3])
    labels = col([0, 1, 0, 1, 1, 0])
    # t=0.8 predicts exactly the three positives -> TP=3, FP=FN=0 -> 1.
    assert max_f1_scores(scores, labels).item() == 1.0


def test_max_f1_reversed_scores():
    scores = col([0.9, 0.8, 0.7, 0.2, 0.1])
    labels = col([0, 0, 0, 1, 1])
    # P = 2; the positives have the lowest scores.
    #   k=1..3: TP=0 -> 0
    #   k=4: TP=1 -> 2/(4+2) = 1/3
    #   k=5: TP=2 -> 4/(5+2) = 4/7   <- best (predict everything positive)
    assert max_f1_scores(scores, labels).item() == pytest.approx(4 / 7, abs=1e-12)


def test_max_f1_label_dtypes_agree():
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(30, 4, generator=gen)
    labels = torch.rand(30, 4, generator=gen) < 0.4
    ref = max_f1_scores(scores, labels)
    for dtype in (torch.int64, torch.uint8, torch.float32, torch.float64):
        assert torch.equal(max_f1_scores(scores, labels.to(dtype)), ref)
    # NumPy input is accepted as well.
    assert torch.equal(max_f1_scores(scores.numpy(), labels.numpy()), ref)


# --------------------------------------------------------------------------- #
# max_f1_scores vs brute force
# --------------------------------------------------------------------------- #
def brute_force_max_f1(scores, labels):
    """Try every distinct score as threshold (positive iff score >= t)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    out = []
    for j in range(scores.shape[1]):
        s, y = scores[:, j], labels[:, j]
        best = 0.0  # "predict nothing" (and zero_division=0)
        for t in np.unique(s):
            pred = s >= t
            tp = np.sum(pred & y)
            fp = np.sum(pred & ~y)
            fn = np.sum(~pred & y)
            denom = 2 * tp + fp + fn
            f1 = 2 * tp / denom if denom > 0 else 0.0
            best = max(best, f1)
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_max_f1_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n, t = 60, 7
    scores = np.round(rng.random((n, t)), 1)  # only 11 distinct values -> ties
    base_rates = rng.uniform(0.05, 0.9, size=t)
    labels = (rng.random((n, t)) < base_rates).astype(np.int64)
    labels[:, 0] = 0  # no positives
    labels[:, 1] = 1  # all positives
    # make positives score a bit higher so interior thresholds matter
    scores[:, 2:] = np.clip(np.round(scores[:, 2:] + 0.3 * labels[:, 2:], 1), 0, 1)

    got = max_f1_scores(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    want = brute_force_max_f1(scores.astype(np.float32), labels)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert got[0].item() == 0.0
    assert got[1].item() == 1.0


# --------------------------------------------------------------------------- #
# binary_attribute_metrics
# --------------------------------------------------------------------------- #
def test_binary_attribute_metrics_hand_case():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.2],
            [0.8, 0.4, 0.6],
            [0.3, 0.5, 0.1],
            [0.1, 0.7, 0.7],
        ]
    )
    labels = torch.tensor(
        [
            [1, 1, 0],
            [1, 0, 0],
            [0, 0, 0],
            [0, 1, 0],
        ],
        dtype=torch.bool,
    )
    names = ["Smiling", "Male", "Bald"]
    out = binary_attribute_metrics(scores, labels, names=names)

    # Smiling: preds [1,1,0,0] == labels -> error 0 %; perfect separation -> F1 100 %
    #          base rate 2/4.
    # Male:    preds [1,0,1,1] vs [1,0,0,1] -> 1 mistake -> 25 %.
    #          max F1, P=2: sorted 0.7(+) | 0.5 0.5 (+,-) | 0.4(-)
    #            t=0.7: k=1 TP=1 -> 2/3;  t=0.5: k=3 TP=2 -> 4/5;  t=0.4: 4/6
    #            -> 80 %.  base rate 2/4.
    # Bald:    no positives; preds [0,1,0,1] -> 2 mistakes -> 50 %; F1 0 %.
    #          base rate 0.
    per = out["per_attribute"]
    assert [p["attribute"] for p in per] == names
    assert [p["base_rate"] for p in per] == [0.5, 0.5, 0.0]
    assert [p["error"] for p in per] == pytest.approx([0.0, 25.0, 50.0])
    assert [p["max_f1"] for p in per] == pytest.approx([100.0, 80.0, 0.0])

    assert isinstance(out["error_rate"], float)
    assert isinstance(out["max_f1"], float)
    assert out["error_rate"] == pytest.approx((0.0 + 25.0 + 50.0) / 3)
    assert out["max_f1"] == pytest.approx((100.0 + 80.0 + 0.0) / 3)


def test_binary_attribute_metrics_aggregate_is_mean_of_per_attribute():
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(200, 5, generator=gen)
    labels = (torch.rand(200, 5, generator=gen) < 0.3).long()
    out = binary_attribute_metrics(scores, labels)
    per = out["per_attribute"]
    assert [p["attribute"] for p in per] == [f"attr_{j}" for j in range(5)]
    assert out["error_rate"] == pytest.approx(np.mean([p["error"] for p in per]))
    assert out["max_f1"] == pytest.approx(np.mean([p["max_f1"] for p in per]))
    assert [p["error"] for p in per] == pytest.approx((100 * error_rates(scores, labels)).tolist())
    assert [p["max_f1"] for p in per] == pytest.approx((100 * max_f1_scores(scores, labels)).tolist())
    assert [p["base_rate"] for p in per] == pytest.approx(labels.double().mean(0).tolist())


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fn", [error_rates, max_f1_scores, binary_attribute_metrics])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(torch.rand(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="shape"):
        fn(torch.rand(5, 3), torch.zeros(4, 3))


@pytest.mark.parametrize("fn", [error_rates, max_f1_scores, binary_attribute_metrics])
def test_not_2d_raises(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.rand(5), torch.zeros(5))


def test_other_invalid_inputs_raise():
    with pytest.raises(ValueError, match="0/1"):
        max_f1_scores(torch.rand(4, 2), torch.full((4, 2), 2))
    with pytest.raises(ValueError, match="NaN"):
        max_f1_scores(torch.tensor([[float("nan")], [0.3]]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="at least one"):
        error_rates(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="names"):
        binary_attribute_metrics(torch.rand(4, 2), torch.ones(4, 2), names=["a"])


# --------------------------------------------------------------------------- #
# device / speed
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(11)
    scores = torch.round(torch.rand(500, 6, generator=gen) * 20) / 20
    labels = torch.rand(500, 6, generator=gen) < 0.4
    f1_cpu = max_f1_scores(scores, labels)
    f1_gpu = max_f1_scores(scores.cuda(), labels.cuda())
    assert f1_gpu.device.type == "cpu"
    assert torch.equal(f1_cpu, f1_gpu)
    assert torch.equal(error_rates(scores, labels), error_rates(scores.cuda(), labels))

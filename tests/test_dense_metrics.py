"""Dense metrics (mtbench.data.dense_metrics): hand-computed values, an independent NumPy
re-implementation of the exact definitions, and the peers' per-batch formulas (re-implemented
here from their definitions) for ``task.metrics=paper``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtbench.data.dense_metrics import MEDIAN_BIN, DenseMetrics, evaluate_dense

NAMES = ["segmentation", "depth", "normal"]


def _one_hot_logits(pred: np.ndarray, classes: int) -> torch.Tensor:
    """Logits [B, C, H, W] whose argmax is ``pred`` [B, H, W]."""
    t = torch.as_tensor(pred, dtype=torch.long)
    return torch.nn.functional.one_hot(t, classes).permute(0, 3, 1, 2).float()


def test_segmentation_by_hand():
    # targets / predictions of 4 pixels (one unlabelled): (0->0), (1->1), (1->0); class 2 never
    # appears (left out of the mean), class 3 is predicted on the unlabelled pixel only (ignored)
    target = torch.tensor([[[0, 1], [1, -1]]])
    pred = np.array([[[0, 1], [0, 3]]])
    out = evaluate_dense([({"segmentation": _one_hot_logits(pred, 4)}, {"segmentation": target})], ["segmentation"], 4)
    # M = [[1, 0], [1, 1]] on classes 0, 1: IoU_0 = 1 / (1 + 2 - 1), IoU_1 = 1 / (2 + 1 - 1)
    assert out["seg_pixacc"] == pytest.approx(100 * 2 / 3)
    assert out["seg_miou"] == pytest.approx(50.0)


def test_segmentation_predicted_absent_class_counts_as_zero():
    target = torch.tensor([[[0, 0], [0, 0]]])
    pred = np.array([[[0, 0], [0, 1]]])  # class 1 predicted once, never a target: IoU 0, counted
    out = evaluate_dense([({"segmentation": _one_hot_logits(pred, 3)}, {"segmentation": target})], ["segmentation"], 3)
    assert out["seg_miou"] == pytest.approx(100 * (3 / 4 + 0) / 2)
    assert out["seg_pixacc"] == pytest.approx(75.0)


def test_depth_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    target = torch.tensor([2.0, 0.0, 2.0, 5.0]).view(1, 1, 1, 4)  # the 0 is missing
    out = evaluate_dense([({"depth": pred}, {"depth": target})], ["depth"])
    assert out["depth_abs_err"] == pytest.approx(1.0)
    assert out["depth_rel_err"] == pytest.approx((0.5 + 0.5 + 0.2) / 3)


def test_normal_by_hand():
    # target (0, 0, 1) everywhere but one missing pixel; predictions at 0, 45, 90 and 45 degrees
    # (not unit length: the metric normalises them)
    pred = torch.tensor([[0, 0, 2.0], [1, 0, 1], [3, 0, 0], [0, 1, 1], [5, 5, 5]]).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[0, 0, 1.0]] * 4 + [[0, 0, 0]]).T.reshape(1, 3, 1, 5)
    out = evaluate_dense([({"normal": pred}, {"normal": target})], ["normal"])
    assert out["normal_mean"] == pytest.approx(45.0, abs=1e-4)
    assert out["normal_median"] == pytest.approx(45.0, abs=MEDIAN_BIN)
    for key in ("normal_within_11", "normal_within_22", "normal_within_30"):
        assert out[key] == pytest.approx(25.0)


# -- an independent implementation of the exact definitions ---------------------------------------


def _numpy_exact(batches, classes: int) -> dict[str, float]:
    """The definitions of docs/reference (exact mode), with NumPy on all pixels at once, per class
    with masks (no confusion matrix)."""
    logits = np.concatenate([o["segmentation"].numpy() for o, _ in batches])
    seg_t = np.concatenate([y["segmentation"].numpy() for _, y in batches])
    seg_p = logits.argmax(1)
    lab = seg_t >= 0
    ious = []
    for c in range(classes):
        inter = np.sum((seg_p == c) & (seg_t == c) & lab)
        union = np.sum(((seg_p == c) | (seg_t == c)) & lab)
        if union:
            ious.append(inter / union)
    depth_p = np.concatenate([o["depth"].numpy() for o, _ in batches]).astype(np.float64)
    depth_t = np.concatenate([y["depth"].numpy() for _, y in batches]).astype(np.float64)
    v = depth_t != 0
    err = np.abs(depth_p[v] - depth_t[v])
    np_p = np.concatenate([o["normal"].numpy() for o, _ in batches]).astype(np.float64)
    np_t = np.concatenate([y["normal"].numpy() for _, y in batches]).astype(np.float64)
    unit = np_p / np.linalg.norm(np_p, axis=1, keepdims=True)
    valid = np.any(np_t != 0, axis=1)
    cos = np.clip(np.sum(unit * np_t, axis=1)[valid], -1, 1)
    ang = np.degrees(np.arccos(cos))
    return {
        "seg_miou": 100 * float(np.mean(ious)),
        "seg_pixacc": 100 * float(np.sum((seg_p == seg_t) & lab) / np.sum(lab)),
        "depth_abs_err": float(err.mean()),
        "depth_rel_err": float((err / depth_t[v]).mean()),
        "normal_mean": float(ang.mean()),
        "normal_median": float(np.median(ang)),
        "normal_within_11": 100 * float(np.mean(ang < 11.25)),
        "normal_within_22": 100 * float(np.mean(ang < 22.5)),
        "normal_within_30": 100 * float(np.mean(ang < 30)),
    }


def _random_batches(sizes: list[int], classes: int = 5, h: int = 6, w: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        seg = torch.randint(-1, classes, (b, h, w), generator=g)
        depth = torch.rand(b, 1, h, w, generator=g) * 5
        depth[torch.rand(b, 1, h, w, generator=g) < 0.2] = 0
        normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        normal = normal * (torch.rand(b, 1, h, w, generator=g) > 0.2)
        outputs = {
            "segmentation": torch.randn(b, classes, h, w, generator=g),
            "depth": torch.rand(b, 1, h, w, generator=g) * 5,
            # predictions near the targets, so the angles spread over the thresholds
            "normal": normal + 0.6 * torch.randn(b, 3, h, w, generator=g),
        }
        out.append((outputs, {"segmentation": seg, "depth": depth, "normal": normal}))
    return out


def test_exact_matches_an_independent_numpy_implementation():
    batches = _random_batches([3, 2, 5, 1])
    ours = evaluate_dense(batches, NAMES, classes=5)
    ref = _numpy_exact(batches, classes=5)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        tol = MEDIAN_BIN if key == "normal_median" else 1e-3 if key == "normal_mean" else 1e-9
        assert ours[key] == pytest.approx(value, abs=tol, rel=1e-6), key


def test_exact_does_not_depend_on_the_batches():
    one = _random_batches([11], seed=3)
    (o, y) = one[0]
    split = [
        ({k: v[a:b] for k, v in o.items()}, {k: v[a:b] for k, v in y.items()}) for a, b in ((0, 2), (2, 9), (9, 11))
    ]
    first, second = evaluate_dense(one, NAMES, 5), evaluate_dense(split, NAMES, 5)
    for key in first:
        assert first[key] == pytest.approx(second[key], rel=1e-9, abs=1e-9), key


def test_exact_median_even_count_is_the_mean_of_the_two_middle_angles():
    pred = torch.tensor([[0, 0, 1.0], [1, 0, 1], [1, 0, 0], [0, 1, 0]]).T.reshape(1, 3, 1, 4)  # 0, 45, 90, 90
    target = torch.tensor([[0, 0, 1.0]] * 4).T.reshape(1, 3, 1, 4)
    out = evaluate_dense([({"normal": pred}, {"normal": target})], ["normal"])
    assert out["normal_median"] == pytest.approx(67.5, abs=MEDIAN_BIN)


# -- the peers' per-batch convention (task.metrics=paper) -------------------------------------------


def _peers(batches, classes: int) -> dict[str, float]:
    """The MTAN / Nash-MTL evaluation loop, re-implemented from its definitions: one confusion
    matrix over the split; depth and normal statistics per batch, summed / number of batches."""
    mat = np.zeros((classes, classes), dtype=np.int64)
    acc = np.zeros(7)
    for o, y in batches:
        p = o["segmentation"].numpy().argmax(1).ravel()
        t = y["segmentation"].numpy().ravel()
        k = (t >= 0) & (t < classes)
        np.add.at(mat, (t[k], p[k]), 1)
        dp, dt = o["depth"].numpy(), y["depth"].numpy()
        mask = np.sum(dt, axis=1) != 0
        e = np.abs(dp[:, 0][mask] - dt[:, 0][mask])
        acc[0] += e.sum() / mask.sum()
        acc[1] += (e / dt[:, 0][mask]).sum() / mask.sum()
        npred = o["normal"].numpy()
        npred = npred / np.linalg.norm(npred, axis=1, keepdims=True)  # the MTAN model's output layer
        nt = y["normal"].numpy()
        nmask = np.sum(nt, axis=1) != 0
        err = np.degrees(np.arccos(np.clip(np.sum(npred * nt, axis=1)[nmask], -1, 1)))
        acc[2:] += [np.mean(err), np.median(err), np.mean(err < 11.25), np.mean(err < 22.5), np.mean(err < 30)]
    acc /= len(batches)
    h = mat.astype(np.float64)
    iu = np.diag(h) / (h.sum(1) + h.sum(0) - np.diag(h))
    keys = ["depth_abs_err", "depth_rel_err", "normal_mean", "normal_median"]
    out = dict(zip(keys, acc[:4]))
    out.update(normal_within_11=100 * acc[4], normal_within_22=100 * acc[5], normal_within_30=100 * acc[6])
    out.update(seg_miou=100 * float(np.mean(iu)), seg_pixacc=100 * float(np.diag(h).sum() / h.sum()))
    return out


def test_paper_matches_the_peers_per_batch_formulas():
    batches = _random_batches([2, 2, 2, 1], seed=5)  # the last batch partial, as with 7 test images
    ours = evaluate_dense(batches, NAMES, classes=5, mode="paper")
    ref = _peers(batches, classes=5)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def test_paper_depends_on_the_batch_size_and_exact_does_not():
    (o, y) = _random_batches([8], seed=7)[0]

    def split(size):
        return [
            ({k: v[a : a + size] for k, v in o.items()}, {k: v[a : a + size] for k, v in y.items()})
            for a in range(0, 8, size)
        ]

    paper = [evaluate_dense(split(s), NAMES, 5, "paper") for s in (1, 3, 8)]
    exact = [evaluate_dense(split(s), NAMES, 5, "exact") for s in (1, 3, 8)]
    assert paper[0]["normal_median"] != pytest.approx(paper[2]["normal_median"], abs=1e-3)
    assert paper[1]["depth_abs_err"] != pytest.approx(paper[2]["depth_abs_err"], abs=1e-9)
    for e in exact[1:]:
        for key in e:
            assert e[key] == pytest.approx(exact[0][key], rel=1e-9, abs=1e-9)
    # one batch of the whole split: the two conventions agree (but for the median's bin)
    for key in paper[2]:
        tol = MEDIAN_BIN if key == "normal_median" else 1e-4
        assert paper[2][key] == pytest.approx(exact[2][key], abs=tol), key


def test_no_valid_pixels_gives_nan_not_an_error():
    acc = DenseMetrics(["depth", "normal"])
    acc.update(
        {"depth": torch.ones(1, 1, 2, 2), "normal": torch.ones(1, 3, 2, 2)},
        {"depth": torch.zeros(1, 1, 2, 2), "normal": torch.zeros(1, 3, 2, 2)},
    )
    out = acc.compute()
    assert all(math.isnan(v) for v in out.values())

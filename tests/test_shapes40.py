"""Tests of the embedded shapes40 dataset (mtbench.data.shapes40)."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from mtbench.data.shapes40 import (
    ATTRIBUTE_DOCS,
    ATTRIBUTES,
    EXCLUSIVE_PAIRS,
    NESTED_PAIRS,
    Shapes40,
    Split,
    make_shapes40,
)

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def sample() -> Shapes40:
    return make_shapes40(seed=0, n_train=6000, n_val=1000, n_test=1000)


def _col(name: str) -> int:
    return ATTRIBUTES.index(name)


# --------------------------------------------------------------------------- names and API


def test_names():
    assert len(ATTRIBUTES) == 40
    assert len(set(ATTRIBUTES)) == 40
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in ATTRIBUTES)
    assert tuple(ATTRIBUTE_DOCS) == ATTRIBUTES
    assert all(isinstance(d, str) and d for d in ATTRIBUTE_DOCS.values())
    for a, b in NESTED_PAIRS + EXCLUSIVE_PAIRS:
        assert a in ATTRIBUTES and b in ATTRIBUTES and a != b


def test_shapes_dtypes_ranges(sample):
    assert isinstance(sample, Shapes40)
    assert sample.attribute_names == list(ATTRIBUTES)
    for name, n in zip(SPLITS, (6000, 1000, 1000), strict=True):
        split = getattr(sample, name)
        assert isinstance(split, Split)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.uint8
        assert tuple(split.images.shape) == (n, 3, 32, 32)
        assert tuple(split.labels.shape) == (n, 40)
        assert set(split.labels.unique().tolist()) == {0, 1}
        # the images use most of the 8-bit range
        assert split.images.min() < 30 and split.images.max() > 225


def test_image_size_changes_pixels_not_labels():
    small = make_shapes40(seed=3, n_train=50, n_val=20, n_test=20, image_size=16)
    big = make_shapes40(seed=3, n_train=50, n_val=20, n_test=20, image_size=40)
    for name in SPLITS:
        assert tuple(getattr(small, name).images.shape[1:]) == (3, 16, 16)
        assert tuple(getattr(big, name).images.shape[1:]) == (3, 40, 40)
        assert torch.equal(getattr(small, name).labels, getattr(big, name).labels)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_data_bit_for_bit():
    a = make_shapes40(seed=7, n_train=300, n_val=100, n_test=100)
    b = make_shapes40(seed=7, n_train=300, n_val=100, n_test=100)
    for name in SPLITS:
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)


def test_different_seed_different_data():
    a = make_shapes40(seed=7, n_train=300, n_val=100, n_test=100)
    c = make_shapes40(seed=8, n_train=300, n_val=100, n_test=100)
    for name in SPLITS:
        assert not torch.equal(getattr(a, name).images, getattr(c, name).images)
        assert not torch.equal(getattr(a, name).labels, getattr(c, name).labels)


def test_splits_share_no_image(sample):
    def hashes(split: Split) -> set[bytes]:
        return {hashlib.sha1(img.numpy().tobytes()).digest() for img in split.images}

    train, val, test = (hashes(getattr(sample, s)) for s in SPLITS)
    assert len(train) == len(sample.train)  # no duplicate inside train either
    assert not train & test
    assert not train & val
    assert not val & test


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_train": -5}, "n_train"),
        ({"n_val": 1.5}, "n_val"),
        ({"n_test": True}, "n_test"),
        ({"n_test": "10"}, "n_test"),
        ({"image_size": 15}, "image_size"),
        ({"image_size": 32.0}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
    ],
)
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg) as info:
        make_shapes40(**{"n_train": 10, "n_val": 10, "n_test": 10, **kwargs})
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- attribute statistics


def test_base_rates_spread(sample):
    rates = sample.train.labels.double().mean(0)
    assert bool(((rates > 0) & (rates < 1)).all()), dict(zip(ATTRIBUTES, rates.tolist(), strict=True))
    assert int((rates < 0.10).sum()) >= 3
    assert int(((rates >= 0.15) & (rates <= 0.35)).sum()) >= 5
    assert int(((rates >= 0.40) & (rates <= 0.60)).sum()) >= 2
    assert int((rates > 0.60).sum()) >= 1
    assert int((rates > 0.70).sum()) >= 2


def test_nested_pairs_are_nested(sample):
    y = torch.cat([getattr(sample, s).labels for s in SPLITS]).bool()
    for child, parent in NESTED_PAIRS:
        c, p = y[:, _col(child)], y[:, _col(parent)]
        assert not bool((c & ~p).any()), f"{child} without {parent}"
        assert int(c.sum()) < int(p.sum()), f"{child} equals {parent}"  # a strict subset


def test_exclusive_pairs_never_both(sample):
    y = torch.cat([getattr(sample, s).labels for s in SPLITS]).bool()
    for a, b in EXCLUSIVE_PAIRS:
        ya, yb = y[:, _col(a)], y[:, _col(b)]
        assert not bool((ya & yb).any()), f"{a} and {b} both true"
        assert bool(ya.any()) and bool(yb.any())
    # bright and dark are not complements: some backgrounds are neither
    neither = ~y[:, _col("bright_background")] & ~y[:, _col("dark_background")]
    assert bool(neither.any())


def test_count_attributes_consistent(sample):
    y = sample.train.labels.long()
    counts = y[:, _col("single_object")] + y[:, _col("exactly_two_objects")] + y[:, _col("three_objects")]
    assert bool((counts == 1).all())
    assert torch.equal(y[:, _col("multiple_objects")], 1 - y[:, _col("single_object")])


def test_background_labels_visible_in_pixels(sample):
    x = sample.train.images.double().mean(dim=(1, 2, 3))
    y = sample.train.labels.bool()
    bright = x[y[:, _col("bright_background")]].mean()
    dark = x[y[:, _col("dark_background")]].mean()
    assert bright > dark + 60  # in 0..255 units
    img = sample.train.images.double()
    red_minus_blue = (img[:, 0] - img[:, 2]).mean(dim=(1, 2))
    warm = red_minus_blue[y[:, _col("warm_background")]].mean()
    cool = red_minus_blue[y[:, _col("cool_background")]].mean()
    assert warm > cool + 20


# --------------------------------------------------------------------------- learnability


def test_tiny_cnn_beats_majority():
    """A tiny CNN trained for 200 steps (16x16 images, one thread) beats the majority error on val."""
    import torch.nn as nn
    import torch.nn.functional as F

    ds = make_shapes40(seed=1, n_train=4000, n_val=1000, n_test=1, image_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than oversubscribed threads on a small machine
    try:
        torch.manual_seed(0)
        x = ds.train.images.float().div(255)
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
        x = (x - mean) / std
        y = ds.train.labels.float()
        xv = (ds.val.images.float().div(255) - mean) / std
        yv = ds.val.labels.float()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        net = nn.Sequential(
            *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 40),
        )  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(200):
            b = torch.randint(0, len(x), (64,), generator=gen)
            loss = F.binary_cross_entropy_with_logits(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            err = ((net(xv) > 0).float() != yv).float().mean(0)
    finally:
        torch.set_num_threads(threads)
    p = yv.mean(0)
    majority = torch.minimum(p, 1 - p).mean()
    assert err.mean() < 0.8 * majority, (float(err.mean()), float(majority))
    # the easy colour attributes are learnt well; not everything is trivial
    for name in ("has_red", "has_blue", "has_green"):
        assert err[_col(name)] < 0.5 * torch.minimum(p, 1 - p)[_col(name)]
    assert err.mean() > 0.01

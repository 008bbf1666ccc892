"""NYUv2 on the MTAN-preprocessed layout: the fake, the loader and its cache, the validation
split, losses, augmentation, bad input, and the real CLI with a tiny dense model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from omegaconf import OmegaConf

from mtbench.data import build_task, check_task
from mtbench.data.dense import dense_loss, random_scale_crop_flip
from mtbench.data.fake.dense import write_fake_dense
from mtbench.errors import MtbenchError

H, W = 32, 64
FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return write_fake_dense("nyuv2", tmp_path_factory.mktemp("nyu") / "nyuv2", n=8, n_val=4, height=H, width=W)


def cfg(root: Path, tmp: Path | None = None, **options):
    base = {"name": "nyuv2", "root": str(root), "cache_dir": str(tmp / "cache") if tmp else None, "tasks": None}
    return OmegaConf.create({**base, **options})


def copy(fake: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(fake, root, ignore=shutil.ignore_patterns(".mtbench_cache"))
    return root


def test_fake_is_in_the_exact_layout(fake):
    for split, n in (("train", 8), ("val", 4)):
        for folder in ("image", "label", "depth", "normal"):
            assert sorted(p.name for p in (fake / split / folder).iterdir()) == sorted(f"{i}.npy" for i in range(n))
    image, label = np.load(fake / "train/image/0.npy"), np.load(fake / "train/label/0.npy")
    depth, normal = np.load(fake / "train/depth/0.npy"), np.load(fake / "train/normal/0.npy")
    assert image.shape == (H, W, 3) and 0 <= image.min() and image.max() <= 1
    assert label.shape == (H, W) and label.min() == -1 and label.max() <= 12
    assert depth.shape == (H, W, 1) and depth.min() == 0 and depth.max() > 0
    assert normal.shape == (H, W, 3)
    valid = np.any(normal != 0, axis=-1)
    assert np.allclose(np.linalg.norm(normal[valid], axis=-1), 1, atol=1e-5) and (~valid).any()


def test_task_splits_cache_and_heads(fake, tmp_path):
    task = build_task(cfg(fake, tmp_path))
    assert task.task_names == ["segmentation", "depth", "normal"] and task.dense
    assert task.head_spec().outputs == {"segmentation": 13, "depth": 1, "normal": 3}
    assert [c.key for c in task.metric_columns][:3] == ["seg_miou", "seg_pixacc", "depth_abs_err"]
    # val/ is the test split, in file order; validation: 1 of the 8 train images (val_fraction 0.1)
    assert (len(task.train), len(task.val), len(task.test)) == (7, 1, 4)
    for i in range(4):
        ref = np.moveaxis(np.load(fake / f"val/image/{i}.npy"), -1, 0)
        assert np.array_equal(task.test.images[i].numpy(), ref)
        assert np.array_equal(task.test.labels["segmentation"][i].numpy(), np.load(fake / f"val/label/{i}.npy"))
        assert np.array_equal(
            task.test.labels["depth"][i].numpy(), np.moveaxis(np.load(fake / f"val/depth/{i}.npy"), -1, 0)
        )
    assert task.test.images.dtype == torch.float32 and task.test.labels["segmentation"].dtype == torch.int64
    # the validation and training images are the train/ files, each once
    train_files = [np.moveaxis(np.load(fake / f"train/image/{i}.npy"), -1, 0) for i in range(8)]
    seen = [
        int(np.argmin([np.abs(f - x.numpy()).max() for f in train_files]))
        for x in (*task.val.images, *task.train.images)
    ]
    assert sorted(seen) == list(range(8))
    # the same seed: the same split (from the cache); another seed: another cache and split
    again = build_task(cfg(fake, tmp_path))
    assert torch.equal(again.val.images, task.val.images)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    other = build_task(cfg(fake, tmp_path, val_seed=5, val_fraction=0.5))
    assert len(other.val) == 4 and len(list((tmp_path / "cache").iterdir())) == 2


def test_task_subset(fake, tmp_path):
    task = build_task(cfg(fake, tmp_path, tasks=["normal", "depth"]))
    assert task.task_names == ["depth", "normal"]  # the canonical order
    assert set(task.train.labels) == {"depth", "normal"}
    assert [c.key for c in task.metric_columns] == [
        "depth_abs_err",
        "depth_rel_err",
        "normal_mean",
        "normal_median",
        "normal_within_11",
        "normal_within_22",
        "normal_within_30",
    ]
    assert check_task(cfg(fake, tasks=["depth"])).num_tasks == 1


def test_losses_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    logits, seg = torch.randn(2, 13, 4, 5, generator=g), torch.randint(-1, 13, (2, 4, 5), generator=g)
    valid = seg >= 0
    manual = -F.log_softmax(logits, 1).gather(1, seg.clamp_min(0)[:, None])[:, 0][valid].mean()
    assert dense_loss("segmentation", logits, seg) == pytest.approx(float(manual), rel=1e-6)
    pred, depth = torch.rand(2, 1, 4, 5, generator=g), torch.rand(2, 1, 4, 5, generator=g)
    depth[0, 0, 0] = 0
    m = depth != 0
    assert dense_loss("depth", pred, depth) == pytest.approx(float((pred - depth).abs()[m].mean()), rel=1e-6)
    pn, tn = torch.randn(2, 3, 4, 5, generator=g), F.normalize(torch.randn(2, 3, 4, 5, generator=g), dim=1)
    tn[1, :, 2] = 0
    mask = tn.abs().sum(1) > 0
    cos = (pn / pn.norm(dim=1, keepdim=True) * tn).sum(1)[mask]
    assert dense_loss("normal", pn, tn) == pytest.approx(float(1 - cos.mean()), rel=1e-5)
    # a batch without any valid pixel: 0, not NaN
    assert float(dense_loss("segmentation", logits, torch.full_like(seg, -1))) == 0.0


def test_augmentation_scales_depth_flips_normals_and_is_reproducible():
    b, h, w = 16, 12, 20
    x = torch.rand(b, 3, h, w)
    labels = {
        "segmentation": torch.randint(0, 13, (b, h, w)),
        "depth": torch.full((b, 1, h, w), 3.0),
        "normal": torch.tensor([0.6, 0.0, 0.8]).view(1, 3, 1, 1).expand(b, 3, h, w).clone(),
    }
    x1, y1 = random_scale_crop_flip(x, labels, torch.Generator().manual_seed(1))
    x2, y2 = random_scale_crop_flip(x, labels, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and all(torch.equal(y1[k], y2[k]) for k in y1)
    scales = set()
    for e in range(b):
        d = y1["depth"][e].unique()  # nearest-neighbour resizing: the constant survives exactly
        assert d.numel() == 1
        scales.add(round(3.0 / float(d), 4))
        nx = y1["normal"][e, 0]
        assert torch.allclose(nx.abs(), torch.full_like(nx, 0.6), atol=1e-5)  # flipped: x negated, else kept
        assert bool((nx > 0).all()) or bool((nx < 0).all())
        assert set(y1["segmentation"][e].unique().tolist()) <= set(labels["segmentation"][e].unique().tolist())
    assert scales <= {1.0, 1.2, 1.5} and len(scales) > 1
    assert {float(y1["normal"][e, 0, 0, 0]) > 0 for e in range(b)} == {True, False}


def test_augmentation_at_scale_one_is_a_flip_or_nothing():
    # with every draw at scale 1 the crop is the whole image: the output is the input, or its mirror
    x = torch.rand(8, 3, 6, 10)
    labels = {"segmentation": torch.randint(0, 13, (8, 6, 10)), "depth": torch.rand(8, 1, 6, 10) + 0.1}
    import mtbench.data.dense as dense

    old = dense.SCALES
    dense.SCALES = (1.0,)
    try:
        y, lab = random_scale_crop_flip(x, labels, torch.Generator().manual_seed(0))
    finally:
        dense.SCALES = old
    for e in range(8):
        same = torch.allclose(y[e], x[e], atol=1e-6)
        mirror = torch.allclose(y[e], x[e].flip(-1), atol=1e-6)
        assert same or mirror
        ref = labels["segmentation"][e] if same else labels["segmentation"][e].flip(-1)
        assert torch.equal(lab["segmentation"][e], ref)


# -- bad input -----------------------------------------------------------------------------------


def _error(root: Path, tmp: Path, **options) -> str:
    with pytest.raises(MtbenchError) as err:
        build_task(cfg(root, tmp, **options))
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_layouts(fake, tmp_path):
    root = copy(fake, tmp_path)
    shutil.rmtree(root / "val" / "normal")
    assert "val/normal is missing" in _error(root, tmp_path)
    assert build_task(cfg(root, tmp_path, tasks=["depth"])).task_names == ["depth"]  # not needed there

    root = copy(fake, tmp_path / "b")
    (root / "train" / "depth" / "3.npy").unlink()
    msg = _error(root, tmp_path)
    assert "train/depth" in msg and ("3.npy is missing" in msg or "has 7" in msg)

    root = copy(fake, tmp_path / "c")
    np.save(root / "train" / "label" / "8.npy", np.zeros((H, W), np.float32))
    assert "label/ has 9" in _error(root, tmp_path)


@pytest.mark.parametrize(
    "folder, array, words",
    [
        ("image", np.zeros((H, W), np.float32), "shape"),
        ("label", np.full((H, W), 13.0, np.float32), "13 classes"),
        ("label", np.full((H, W), 0.5, np.float32), "whole numbers"),
        ("depth", -np.ones((H, W, 1), np.float32), "negative depth"),
        ("depth", np.full((H, W, 1), np.nan, np.float32), "NaN"),
        ("normal", np.full((H, W, 3), 0.9, np.float32), "not 1"),
    ],
)
def test_bad_values(fake, tmp_path, folder, array, words):
    root = copy(fake, tmp_path)
    np.save(root / "val" / folder / "2.npy", array)
    msg = _error(root, tmp_path)
    assert words in msg and str(root / "val" / folder / "2.npy") in msg
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert not any(".tmp-" in name for name in left)  # no half-built cache left behind
    if folder != "normal":  # (the normals' length is checked against task.normal_tol when loading)
        assert left == []


def test_bad_options(fake):
    for options, words in (
        ({"tasks": ["depth", "edges"]}, "'edges' is not a task of nyuv2"),
        ({"tasks": "depth"}, "task.tasks must be a list"),
        ({"metrics": "approx"}, "task.metrics"),
        ({"val_fraction": 1.0}, "task.val_fraction"),
        ({"root": None}, "data.root is not set"),
        ({"root": "/nonexistent/nyu"}, "is not a folder"),
    ):
        with pytest.raises(MtbenchError) as err:
            check_task(OmegaConf.merge(cfg(fake), options))
        assert words in str(err.value)


# -- the CLI -------------------------------------------------------------------------------------


def _cli_args(root: Path, *extra: str) -> list[str]:
    return [
        "task=nyuv2",
        f"data.root={root}",
        "model=small_cnn",  # its width key; the trunk is the toy one
        "model._target_=toydense.build",
        "model.name=toydense",
        "model.width=8",
        "trainer.epochs=2",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "trainer.eval_batch_size=4",
        *extra,
    ]


def test_cli_run_metrics_report_last_k_and_predictions(fake, tmp_path):
    shutil.copy(FIXTURES / "toydense.py", tmp_path)
    r = run_cli("mtbench", _cli_args(fake, "trainer.report=last_k", "trainer.report_k=2"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "results" / "nyuv2" / "runs" / "baseline").glob("*/seed=0")
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["tasks"] == ["segmentation", "depth", "normal"]
    assert (record["report"], record["report_k"], record["report_epochs"]) == ("last_k", 2, [1, 2])
    assert list(record["test"]) == [c[0] for c in record["metric_columns"]] and len(record["test"]) == 9
    # last_k: val is the mean of the last two epochs' validation rows
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 2
    for key, value in record["val"].items():
        rows = [float(row[f"val_{key}"]) for row in history]
        assert value == pytest.approx(sum(rows) / 2, rel=1e-6)
    pred = torch.load(run / "predictions.pt", weights_only=True)
    assert pred["index"].tolist() == [0, 1, 2, 3]
    assert pred["image"].dtype == torch.uint8 and pred["image"].shape == (4, 3, H, W)
    assert pred["segmentation"].dtype == torch.int64 and pred["segmentation"].shape == (4, H, W)
    assert pred["depth"].shape == pred["depth_target"].shape == (4, H, W)
    assert torch.allclose(pred["normal"].norm(dim=1), torch.ones(4, H, W), atol=1e-4)
    ref = np.load(fake / "val/label/3.npy")
    assert np.array_equal(pred["segmentation_target"][3].numpy(), ref)
    assert np.array_equal(
        pred["image"][0].numpy(), np.round(np.moveaxis(np.load(fake / "val/image/0.npy"), -1, 0) * 255)
    )


@pytest.mark.slow
def test_cli_single_task_and_bad_input_exit_2(fake, tmp_path):
    shutil.copy(FIXTURES / "toydense.py", tmp_path)
    r = run_cli("mtbench", _cli_args(fake, "task.tasks=[depth]", "trainer.epochs=1"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "results" / "nyuv2" / "runs" / "baseline").glob("*/seed=0")
    record = json.loads((run / "metrics.json").read_text())
    assert record["tasks"] == ["depth"] and list(record["test"]) == ["depth_abs_err", "depth_rel_err"]
    assert (record["report"], record["report_k"]) == ("best_val", None)
    assert set(torch.load(run / "predictions.pt", weights_only=True)) == {"index", "image", "depth", "depth_target"}

    bad = copy(fake, tmp_path / "bad")
    np.save(bad / "train" / "label" / "0.npy", np.full((H, W), 20.0, np.float32))
    r = run_cli("mtbench", _cli_args(bad, "name=bad"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert "mtbench: error:" in lines[-1] and "train/label/0.npy" in lines[-1] and "Traceback" not in r.stderr
    assert not list((tmp_path / "results" / "bad").rglob("metrics.json"))

    r = run_cli("mtbench", _cli_args(fake, "name=bad2", "task.tasks=[edges]"), cwd=tmp_path)
    assert r.returncode == 2 and "task.tasks" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(
    not (REPO / "configs" / "model" / "segnet_mtan.yaml").exists(), reason="needs the SegNet-MTAN model config"
)
def test_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for preset, task, model in (
            ("nyuv2_nashmtl", "nyuv2", "segnet_mtan"),
            ("cityscapes_nashmtl", "cityscapes", "segnet_mtan"),
            ("nyuv2_libmtl", "nyuv2", "resnet50_deeplab"),
        ):
            c = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
            assert c.task.name == task and c.model.name == model
            assert c.trainer.report == "last_k" and c.trainer.report_k == 10
            assert c.trainer.epochs == 200


@pytest.mark.slow
def test_last_k_resumes_to_the_numbers_of_an_uninterrupted_run(fake, tmp_path, monkeypatch):
    import sys

    from hydra import compose, initialize_config_dir

    import mtbench.models as models
    from mtbench.train.loop import Trainer, train
    from mtbench.train.signals import StopFlag

    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setattr(models, "build_heads", models.build_heads)  # restored after the test
    sys.modules.pop("toydense", None)
    import toydense  # noqa: F401 - dense heads for its trunk

    overrides = [
        "task=nyuv2",
        f"data.root={fake}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model=small_cnn",  # its width key; the trunk is the toy one
        "+model._target_=toydense.build",
        "model.name=toydense",
        "model.width=8",
        "trainer.epochs=3",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "trainer.progress=false",
        "trainer.report=last_k",
        "trainer.report_k=2",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    whole = train(cfg)
    run = Trainer(cfg, tmp_path / "run")
    for _ in range(2):  # two epochs, then a new process would resume from the checkpoint
        run.train_epoch(StopFlag())
        run.end_epoch()
    assert [r["epoch"] for r in run.state.reported] == [2]
    resumed = train(cfg, run_dir=tmp_path / "run")
    assert resumed["report_epochs"] == whole["report_epochs"] == [2, 3]
    assert resumed["test"] == whole["test"] and resumed["val"] == whole["val"]

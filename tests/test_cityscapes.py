"""Cityscapes on the MTAN-preprocessed layout: the fake, 7 and 19 classes, bad input, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from mtbench.data import build_task, check_task
from mtbench.data.fake.dense import CITY_19_TO_7, write_fake_dense
from mtbench.errors import MtbenchError

H, W = 32, 64
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return write_fake_dense(
        "cityscapes", tmp_path_factory.mktemp("city") / "cityscapes", n=8, n_val=4, height=H, width=W
    )


def cfg(root: Path, tmp: Path, **options):
    return OmegaConf.create({"name": "cityscapes", "root": str(root), "cache_dir": str(tmp / "cache"), **options})


def test_fake_layout_and_grouped_labels(fake):
    for split, n in (("train", 8), ("val", 4)):
        for folder in ("image", "label_7", "label_19", "depth"):
            assert len(list((fake / split / folder).glob("*.npy"))) == n
    l7, l19 = np.load(fake / "val/label_7/1.npy"), np.load(fake / "val/label_19/1.npy")
    assert l7.shape == l19.shape == (H, W) and l7.max() < 7 and l19.max() < 19
    assert np.array_equal(l7 == -1, l19 == -1)
    assert np.array_equal(l7[l19 >= 0], CITY_19_TO_7[l19[l19 >= 0].astype(int)])
    assert np.load(fake / "val/depth/1.npy").shape == (H, W, 1)


@pytest.mark.parametrize("classes", [7, 19])
def test_classes_pick_the_label_folder(fake, tmp_path, classes):
    task = build_task(cfg(fake, tmp_path, classes=classes))
    assert task.task_names == ["segmentation", "depth"]
    assert task.head_spec().outputs == {"segmentation": classes, "depth": 1}
    assert [c.key for c in task.metric_columns] == ["seg_miou", "seg_pixacc", "depth_abs_err", "depth_rel_err"]
    ref = np.load(fake / f"val/label_{classes}/2.npy")
    assert np.array_equal(task.test.labels["segmentation"][2].numpy(), ref)
    assert (len(task.train), len(task.val), len(task.test)) == (7, 1, 4)


def test_bad_input(fake, tmp_path):
    with pytest.raises(MtbenchError, match="task.classes=13 is not allowed for cityscapes; choose 7 or 19"):
        check_task(cfg(fake, tmp_path, classes=13))
    with pytest.raises(MtbenchError, match="'normal' is not a task of cityscapes"):
        check_task(cfg(fake, tmp_path, tasks=["normal"]))
    root = tmp_path / "data"
    shutil.copytree(fake, root, ignore=shutil.ignore_patterns(".mtbench_cache"))
    shutil.rmtree(root / "train" / "label_19")
    assert build_task(cfg(root, tmp_path)).classes == 7  # label_19 is needed only for 19 classes
    with pytest.raises(MtbenchError, match="train/label_19 is missing"):
        check_task(cfg(root, tmp_path, classes=19))
    np.save(root / "train" / "label_7" / "4.npy", np.full((H, W), 7.0, np.float32))
    with pytest.raises(MtbenchError, match="label_7/ holds 7 classes"):
        build_task(cfg(root, tmp_path, cache_dir=str(tmp_path / "cache2")))


def test_cli_run(fake, tmp_path):
    shutil.copy(FIXTURES / "toydense.py", tmp_path)
    args = [
        "task=cityscapes",
        f"data.root={fake}",
        "model=small_cnn",  # its width key; the trunk is the toy one
        "model._target_=toydense.build",
        "model.name=toydense",
        "model.width=8",
        "trainer.epochs=2",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "task.metrics=paper",
    ]
    r = run_cli("mtbench", args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "results" / "cityscapes" / "runs" / "baseline").glob("*/seed=0")
    record = json.loads((run / "metrics.json").read_text())
    assert record["tasks"] == ["segmentation", "depth"] and record["report"] == "best_val"
    assert list(record["test"]) == ["seg_miou", "seg_pixacc", "depth_abs_err", "depth_rel_err"]
    assert all(np.isfinite(v) for v in record["test"].values())
    pred = torch.load(run / "predictions.pt", weights_only=True)
    assert set(pred) == {"index", "image", "segmentation", "segmentation_target", "depth", "depth_target"}
    assert int(pred["segmentation"].max()) < 7

"""The CIFAR-100 transfer task on a fake CIFAR-100 and a random state_dict standing in for the
ImageNet weights: pickles, both root layouts, the validation split, the weights file, the heads,
the losses and metrics, bad input, and the real `mtbench -m task=cifar100_transfer` sweep."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import cli_case, run_cli, run_dir
from omegaconf import OmegaConf

from mtbench.combiners import PAPER, build_combiner
from mtbench.data import build_task
from mtbench.data import cifar100 as c100
from mtbench.errors import MtbenchError
from mtbench.models import build_heads, build_model
from mtbench.models.resnet import InputResize, load_resnet
from mtbench.train.loop import Preprocess, evaluate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_fake_cifar100.py"
FIXTURES = Path(__file__).parent / "fixtures"
N_TRAIN, N_TEST, VAL = 96, 32, 32
COLUMNS = ["target top-1 error (%) ↓", "target top-5 error (%) ↓", "source agreement (%) ↑"]

torch.set_num_threads(1)


def _script():
    spec = importlib.util.spec_from_file_location("make_fake_cifar100", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    _script().write_fake_cifar100(root, n=N_TRAIN, n_test=N_TEST)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A random resnet18 state_dict, saved as a user's pretrained weights would be."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def task_cfg(root, weights, **over):
    cfg = {
        "name": "cifar100_transfer",
        "root": str(root),
        "download": False,
        "source_root": None,
        "image_size": 32,
        "arch": "resnet18",
        "weights": None if weights is None else str(weights),
        "device": "cpu",
        "val_size": VAL,
        "val_seed": 0,
        "temperature": 2.0,
        "coarse": False,
        "leak": {"target": 1.0, "source": 0.0, "coarse": 0.0},
        "teacher_batch_size": 64,
        "source_batch_size": 8,
        "source_workers": 0,
        "seed": 0,
    }
    cfg.update(over)
    return OmegaConf.create(cfg)


def built(cfg):
    """The task built and set up (``Task.setup``: the frozen network's predictions) on the CPU."""
    task = build_task(cfg)
    task.setup(torch.device("cpu"))
    return task


def model_cfg(weights, size=32):
    return OmegaConf.create({"name": "resnet18", "small_input": False, "weights": str(weights), "input_size": size})


# -- the fake data writer and the pickles ------------------------------------------------------------


def test_fake_writer_script_writes_the_python_layout(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--n", "120", "--n-test", "30"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    for name, n in (("train", 120), ("test", 30)):
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        assert {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"} <= set(d)
        assert d["data"].dtype == np.uint8 and d["data"].shape == (n, 3072)
        fine, coarse = np.array(d["fine_labels"]), np.array(d["coarse_labels"])
        assert fine.shape == coarse.shape == (n,) and fine.min() >= 0 and fine.max() < 100 and coarse.max() < 20
        assert (coarse == fine // 5).all()
    assert len(set(pickle.load(open(folder / "train", "rb"), encoding="latin1")["fine_labels"])) == 100
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


def test_both_root_layouts_load_the_same_data(tmp_path, data_root):
    flat = _script().write_fake_cifar100(tmp_path / "flat", n=N_TRAIN, n_test=N_TEST, flat=True)
    assert c100.find_cifar100(data_root) == data_root / "cifar-100-python"
    assert c100.find_cifar100(flat) == flat
    a, b = c100.load_cifar100(data_root), c100.load_cifar100(flat)
    for key in ("train_images", "train_fine", "train_coarse", "test_images", "test_fine", "test_coarse"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.train_images.shape == (N_TRAIN, 3, 32, 32) and a.test_images.shape == (N_TEST, 3, 32, 32)
    assert a.train_images.dtype == torch.uint8


def test_images_labels_and_names_decode_as_cifar(data_root):
    d = c100.load_cifar100(data_root)
    with open(data_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    row = raw["data"][7]  # 1024 red, 1024 green, 1024 blue, each row-major
    for ch in range(3):
        assert np.array_equal(d.train_images[7, ch].numpy(), row[1024 * ch : 1024 * (ch + 1)].reshape(32, 32))
    assert d.train_fine.tolist() == raw["fine_labels"] and d.train_coarse.tolist() == raw["coarse_labels"]
    assert d.fine_names[:2] == ["fine_00", "fine_01"] and len(d.coarse_names) == 20


def test_validation_split_is_held_out_from_train_and_seeded():
    tr, va = c100.split_train_val(100, 20, seed=0)
    assert len(va) == 20 and len(tr) == 80 and not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert torch.equal(va, c100.split_train_val(100, 20, seed=0)[1])
    assert not torch.equal(va, c100.split_train_val(100, 20, seed=1)[1])
    for bad in (0, 100):
        with pytest.raises(MtbenchError, match="task.val_size"):
            c100.split_train_val(100, bad, seed=0)


# -- the task: weights file, heads, teacher, losses, metrics ----------------------------------------


def test_task_loads_weights_file_into_trunk_teacher_and_source_head(data_root, weights):
    task = built(task_cfg(data_root, weights))
    state = torch.load(weights, weights_only=True)
    assert task.task_names == ["target", "source"] and task.default_leak == [1.0, 0.0]
    assert [len(task.train), len(task.val), len(task.test)] == [N_TRAIN - VAL, VAL, N_TEST]
    assert [c.key for c in task.metric_columns] == ["top1_error", "top5_error", "source_agreement"]
    model = build_model(model_cfg(weights), task=task)
    # trunk: the file's weights, pretrained stem kept; source head: the file's classifier
    assert torch.equal(model.trunk.net.conv1.weight, state["conv1.weight"]) and model.trunk.net.conv1.kernel_size == (
        7,
        7,
    )
    assert torch.equal(model.heads.source.weight, state["fc.weight"]) and torch.equal(
        model.heads.source.bias, state["fc.bias"]
    )
    assert model.heads.target.out_features == 100 and model.heads.coarse is None
    # distillation targets: the frozen network's logits on the same (ImageNet-normalised) images
    net = torchvision.models.resnet18()
    net.load_state_dict(state)
    net.eval()
    mean, std = torch.tensor(c100.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(c100.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((task.train.images[:4].float() / 255 - mean) / std)
    torch.testing.assert_close(task.train.labels["teacher"][:4].float(), expected, atol=2e-3, rtol=2e-3)
    # before any training the source head is the pretrained network: full agreement
    result = evaluate(model, task, task.val, Preprocess(task, torch.device("cpu")), 64)
    assert result["source_agreement"] == 100.0
    assert 0 <= result["top1_error"] <= 100 and result["top5_error"] <= result["top1_error"]


def test_upsampled_input_is_seen_by_trunk_and_teacher_alike(data_root, weights):
    task = built(task_cfg(data_root, weights, image_size=48))
    model = build_model(model_cfg(weights, size=48), task=task)
    assert isinstance(model.trunk, InputResize) and model.trunk.size == 48
    result = evaluate(model, task, task.test, Preprocess(task, torch.device("cpu")), 64)
    assert result["source_agreement"] == 100.0


def test_coarse_head_is_a_third_task_with_its_column(data_root, weights):
    task = built(task_cfg(data_root, weights, coarse=True, leak={"target": 1.0, "coarse": 0.5}))
    assert task.task_names == ["target", "source", "coarse"] and task.default_leak == [1.0, 0.0, 0.5]
    assert [c.key for c in task.metric_columns][-1] == "coarse_error"
    heads = build_heads(task.head_spec(), 512)
    out = heads(torch.randn(4, 512))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"target": (4, 100), "source": (4, 1000), "coarse": (4, 20)}
    labels = {k: v[:4] for k, v in task.train.labels.items()}
    losses = task.losses(out, labels)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    torch.testing.assert_close(losses[2], torch.nn.functional.cross_entropy(out["coarse"], labels["coarse"]))


def test_graddrop_gets_the_task_leak(data_root, weights):
    task = built(task_cfg(data_root, weights))
    for name in ("graddrop", "random_graddrop"):
        cfg = OmegaConf.load(ROOT / "configs" / "combiner" / f"{name}.yaml")
        assert build_combiner(cfg, task.num_tasks, default_leak=task.default_leak).leak == [1.0, 0.0]
    cfg = OmegaConf.load(ROOT / "configs" / "combiner" / "gradnorm_graddrop.yaml")
    assert build_combiner(cfg, task.num_tasks, default_leak=task.default_leak).combine.leak == [1.0, 0.0]


def test_distillation_loss_is_temperature_scaled_kl(data_root, weights):
    task = built(task_cfg(data_root, weights, temperature=3.0))
    teacher = torch.randn(5, 1000)
    student = torch.randn(5, 1000)
    p = torch.softmax(teacher / 3, 1)
    expected = 9 * (p * (torch.log_softmax(teacher / 3, 1) - torch.log_softmax(student / 3, 1))).sum(1).mean()
    torch.testing.assert_close(task._distill(student, teacher), expected)
    assert task._distill(teacher, teacher).abs() < 1e-5


def test_metrics_count_top1_top5_and_agreement(data_root, weights):
    task = built(task_cfg(data_root, weights))
    fine = torch.tensor([3, 4, 5, 6])
    top5 = torch.tensor([[3, 0, 1, 2, 7], [0, 4, 1, 2, 7], [0, 1, 2, 7, 8], [6, 0, 1, 2, 7]])
    scores = {"target_top5": top5, "source_top1": torch.tensor([1, 2, 3, 9])}
    labels = {"fine": fine, "coarse": fine // 5, "teacher_top1": torch.tensor([1, 2, 0, 0])}
    m = task.evaluate(scores, labels)
    assert (m["top1_error"], m["top5_error"], m["source_agreement"]) == (50.0, 25.0, 50.0)
    rows = {r["attribute"]: r for r in m["per_attribute"]}
    assert (
        rows["fine_04"]["error"] == 100.0 and rows["fine_03"]["error"] == 0.0 and rows["fine_03"]["base_rate"] == 0.25
    )


# -- real ImageNet batches drawn alongside (data.source_root) ---------------------------------------


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c in range(1000):
        folder = root / f"n{c:08d}"
        folder.mkdir()
        if c % 250 == 0:
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_imagenet_batches_are_appended_and_trained_with_cross_entropy(data_root, weights, imagenet_root):
    task = built(task_cfg(data_root, weights, source_root=str(imagenet_root)))
    assert "teacher" not in task.train.labels  # no distillation targets needed
    x = torch.randn(6, 3, 32, 32)
    labels = {k: v[:6] for k, v in task.train.labels.items()}
    x2, y2 = task.extend_batch(x, labels)
    assert x2.shape == (6 + 8, 3, 32, 32) and torch.equal(x2[:6], x)
    assert set(y2["source"].tolist()) <= {0, 250, 500, 750}
    model = build_model(model_cfg(weights), task=task)
    _, out = model(x2)
    losses = task.losses(out, y2)
    torch.testing.assert_close(losses[1], torch.nn.functional.cross_entropy(out["source"][6:], y2["source"]))
    torch.testing.assert_close(losses[0], torch.nn.functional.cross_entropy(out["target"][:6], y2["fine"]))


def test_imagenet_source_runs_through_the_training_loop(data_root, weights, imagenet_root, tmp_path):
    from hydra import compose, initialize_config_module

    from mtbench.train import train

    with initialize_config_module(version_base="1.3", config_module="mtbench.configs"):
        cfg = compose(
            "config",
            [
                "task=cifar100_transfer",
                f"data.root={data_root}",
                f"model.weights={weights}",
                f"data.source_root={imagenet_root}",
                "data.image_size=40",
                f"task.val_size={VAL}",
                "task.source_workers=0",
                "task.source_batch_size=4",
                "trainer.epochs=1",
                "trainer.batch_size=32",
                "trainer.device=cpu",
                "trainer.num_threads=1",
                "combiner=graddrop",
                f"results_dir={tmp_path}",
            ],
        )
    result = train(cfg)
    assert result["steps"] == 2 and result["examples_per_s"] > 0
    assert set(result["test"]) == {"top1_error", "top5_error", "source_agreement"}


def test_imagenet_folder_with_wrong_class_count_is_rejected(data_root, weights, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(MtbenchError, match="1 class folders; the pretrained classifier has 1000"):
        built(task_cfg(data_root, weights, source_root=str(tmp_path)))


# -- bad input ------------------------------------------------------------------------------------------


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(MtbenchError, match=f"file {missing} does not exist"):
        load_resnet("resnet18", str(missing))


def test_weights_of_another_architecture_name_file_keys_and_shapes(weights):
    with pytest.raises(MtbenchError) as err:
        load_resnet("resnet50", str(weights))
    msg = str(err.value)
    assert str(weights) in msg and "not a resnet50 state_dict" in msg and "\n" not in msg
    assert "missing keys [" in msg and "layer1.0.conv3.weight" in msg
    assert (
        "mismatched shapes [" in msg
        and "layer1.0.conv1.weight: (64, 64, 3, 3) in the file, (64, 64, 1, 1) expected" in msg
    )


def test_weights_with_another_classifier_name_the_shape(tmp_path):
    path = tmp_path / "r18_10way.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(MtbenchError, match=r"fc\.weight: \(10, 512\) in the file, \(1000, 512\) expected"):
        load_resnet("resnet18", str(path))


def test_corrupt_weights_file_and_unknown_weights_name(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(MtbenchError, match=f"file {path} is not a readable state_dict"):
        load_resnet("resnet18", str(path))
    with pytest.raises(MtbenchError, match="IMAGENET1K_V1"):  # a name, not a file: no download attempted
        load_resnet("resnet18", "IMAGENET_NONSUCH")


def test_transfer_needs_weights_and_a_resnet(data_root, weights):
    with pytest.raises(MtbenchError, match="needs pretrained weights"):
        build_task(task_cfg(data_root, None))
    with pytest.raises(MtbenchError, match="model=resnet18 or model=resnet50"):
        build_task(task_cfg(data_root, weights, arch="small_cnn"))
    with pytest.raises(MtbenchError, match="task.leak.fine"):
        build_task(task_cfg(data_root, weights, leak={"fine": 1.0}))


def test_missing_cifar_names_the_expected_layout(tmp_path):
    with pytest.raises(MtbenchError, match=r"cifar-100-python/\{train,test,meta\} not found.*data.download=true"):
        c100.load_cifar100(tmp_path)
    with pytest.raises(MtbenchError, match="data.root is not set"):
        c100.load_cifar100(None)


def test_partial_cifar_names_the_missing_file(tmp_path):
    folder = _script().write_fake_cifar100(tmp_path, n=10, n_test=5)
    (folder / "meta").unlink()
    with pytest.raises(
        MtbenchError, match=f"CIFAR-100 files missing: {folder / 'meta'}; expected <root>/cifar-100-python"
    ):
        c100.load_cifar100(tmp_path)


@pytest.mark.parametrize(
    "content", [b"garbage, not a pickle", b"\x80\x02}q\x00(X\x04\x00\x00\x00data"]
)  # junk, truncated
def test_corrupt_pickle_names_the_file_and_layout(tmp_path, content):
    folder = _script().write_fake_cifar100(tmp_path, n=10, n_test=5)
    (folder / "train").write_bytes(content)
    with pytest.raises(
        MtbenchError, match=f"CIFAR-100 file {folder / 'train'} is corrupt.*expected <root>/cifar-100-python"
    ):
        c100.load_cifar100(tmp_path)


def test_pickle_with_wrong_content_or_code_is_refused(tmp_path):
    folder = _script().write_fake_cifar100(tmp_path, n=10, n_test=5)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": np.zeros((5, 3072), np.uint8), "fine_labels": [0] * 5}, f, protocol=2)
    with pytest.raises(MtbenchError, match=f"{folder / 'test'} lacks key\\(s\\) coarse_labels"):
        c100.load_cifar100(tmp_path)
    with open(folder / "test", "wb") as f:
        pickle.dump(
            {"data": np.zeros((5, 100), np.uint8), "fine_labels": [0] * 5, "coarse_labels": [0] * 5}, f, protocol=2
        )
    with pytest.raises(MtbenchError, match=r"data is uint8 \(5, 100\), expected uint8 \[N, 3072\]"):
        c100.load_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test", "wb") as f:
        pickle.dump({"data": Evil()}, f, protocol=2)
    with pytest.raises(MtbenchError, match=r"global \w+\.print is not allowed"):
        c100.load_cifar100(tmp_path)


def test_download_uses_torchvision_only_when_missing(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            _script().write_fake_cifar100(root, n=10, n_test=5)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    d = c100.load_cifar100(tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and len(d.train_images) == 10
    c100.load_cifar100(tmp_path, download=True)
    assert len(calls) == 1  # already there: no second download


# -- configuration and the real command ------------------------------------------------------------------


def test_task_config_switches_model_and_keeps_shapes40_defaults():
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="mtbench.configs"):
        cfg = compose(
            "config", ["task=cifar100_transfer", "data.root=/data", "model.weights=IMAGENET1K_V1", "data.image_size=64"]
        )
        r50 = compose("config", ["task=cifar100_transfer", "model=resnet50"])
        plain = compose("config", [])
    assert cfg.model.name == "resnet18" and cfg.model.small_input is False and cfg.model.input_size == 64
    assert cfg.task.root == "/data" and cfg.task.weights == "IMAGENET1K_V1" and cfg.task.image_size == 64
    assert cfg.trainer.optimizer == "sgd" and cfg.task.leak.target == 1.0
    assert r50.model.name == "resnet50" and r50.model.small_input is False and r50.task.arch == "resnet50"
    assert plain.task.name == "shapes40" and plain.model.name == "small_cnn" and plain.trainer.optimizer == "adam"


cli_case(
    __name__,
    "missing weights",
    "mtbench",
    lambda folder: [
        "task=cifar100_transfer",
        f"data.root={folder / 'cifar'}",
        f"model.weights={folder / 'missing.pth'}",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        f"task.val_size={VAL}",
    ],
    setup=lambda folder: _script().write_fake_cifar100(folder / "cifar", n=N_TRAIN, n_test=N_TEST),
)


def test_cli_bad_weights_is_a_one_line_error(cli_runs):
    proc = cli_runs[__name__, "missing weights"]
    missing = proc.cwd / "missing.pth"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"mtbench: error: model.weights: file {missing} does not exist" in proc.stderr


def transfer_args(data_root, weights, epochs: int = 1, batch_size: int = 32) -> list[str]:
    """cifar100_transfer on the fake CIFAR-100, on the CPU (by default one epoch of 2 steps)."""
    return [
        "task=cifar100_transfer",
        f"data.root={data_root}",
        f"model.weights={weights}",
        f"task.val_size={VAL}",
        f"trainer.epochs={epochs}",
        f"trainer.batch_size={batch_size}",
        "trainer.eval_batch_size=64",
        "trainer.device=cpu",
        "trainer.num_threads=1",
    ]


def assert_completed_one_epoch_run(run: Path) -> dict:
    """The metrics.json and per_attribute.csv of a completed run of ``transfer_args``' defaults; its metrics."""
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed", m.get("reason")
    assert (m["task"], m["model"], m["select_metric"]) == ("cifar100_transfer", "resnet18", "top1_error")
    for split in ("val", "test"):
        assert set(m[split]) == {"top1_error", "top5_error", "source_agreement"}
        assert all(0 <= v <= 100 for v in m[split].values())
    assert m["steps"] == 2
    classes = pd.read_csv(run / "per_attribute.csv")
    assert len(classes) == 100 and classes["count"].sum() == N_TEST
    return m


def test_one_run_end_to_end(data_root, weights, tmp_path):
    """The fast suite's end-to-end run of cifar100_transfer: one `mtbench` run on the fake files."""
    proc = run_cli("mtbench", transfer_args(data_root, weights), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_completed_one_epoch_run(run_dir(tmp_path / "results" / "cifar100_transfer", "baseline", 0))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root, weights):
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("mtbench", ["-m", *transfer_args(data_root, weights)], cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "results" / "cifar100_transfer", proc


def test_sweep_runs_the_papers_combiners(sweep):
    folder, _ = sweep
    for name in PAPER:
        m = assert_completed_one_epoch_run(run_dir(folder, name, 0))
        assert m["config"]["model"]["weights"] == m["config"]["task"]["weights"]


def test_sweep_table_has_the_transfer_columns(sweep):
    folder, proc = sweep
    header = "| combiner | " + " | ".join(COLUMNS) + " | speed vs baseline |"
    assert header in (folder / "table.md").read_text()
    assert header in proc.stdout and "max F1" not in proc.stdout
    table = pd.read_csv(folder / "table.csv")
    assert list(table["combiner"]) == list(PAPER)
    assert {"test_top1_error_mean", "test_top5_error_mean", "test_source_agreement_mean"} <= set(table.columns)


# -- the same numbers alone, late in a sweep, and after a kill ---------------------------------------

#: pcgrad and mgda at level=params and gradnorm take the factored path at ResNet's last stage
RESUMED = ["baseline", "pcgrad", "mgda_params", "gradnorm", "graddrop"]


def short_args(data_root, weights) -> list[str]:
    """3 epochs of 2 steps (48 images, then 16) on the fake CIFAR-100."""
    return [
        *transfer_args(data_root, weights, epochs=3, batch_size=48),
        f"hydra.searchpath=[file://{FIXTURES / 'configs'}]",
    ]


def numbers(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    history = pd.read_csv(run / "history.csv").drop(columns=["train_step_s"])
    return {"test": m["test"], "val": m["val"], "best_epoch": m["best_epoch"], "history": history.to_dict("list")}


def combiner_name(choice: str) -> str:
    return "mgda" if choice == "mgda_params" else choice


@pytest.fixture(scope="module")
def short_sweep(tmp_path_factory, data_root, weights) -> Path:
    """The combiners of RESUMED, uninterrupted, in one process (the teacher's predictions are
    computed by the first run and reused by the others)."""
    cwd = tmp_path_factory.mktemp("short_sweep")
    proc = run_cli(
        "mtbench", ["-m", f"combiner={','.join(RESUMED)}", *short_args(data_root, weights)], cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "results" / "cifar100_transfer"


def test_a_run_alone_has_the_numbers_it_has_late_in_a_sweep(tmp_path, data_root, weights, short_sweep):
    """Alone, the run builds the teacher itself (a cache miss): the new heads' initialisation
    must not depend on it."""
    proc = run_cli(
        "mtbench",
        [*short_args(data_root, weights), "combiner=graddrop", "~hydra.callbacks.tables"],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    alone = numbers(run_dir(tmp_path / "results" / "cifar100_transfer", "graddrop"))
    assert alone == numbers(run_dir(short_sweep, "graddrop"))


@pytest.mark.parametrize("choice", [c for c in RESUMED if c != "baseline"])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, data_root, weights, short_sweep, choice):
    """SIGKILL right after the first step of epoch 2: a new process resumes from epoch 1's
    checkpoint and ends with the uninterrupted run's exact numbers."""
    args = [*short_args(data_root, weights), f"combiner={choice}", "~hydra.callbacks.tables"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    first = subprocess.run(
        [sys.executable, str(FIXTURES / "interrupt_at.py"), "3", "SIGKILL", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = run_dir(tmp_path / "results" / "cifar100_transfer", combiner_name(choice))
    assert json.loads((run / "metrics.json").read_text())["status"] == "running"
    again = run_cli("mtbench", args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming from" in again.stderr and "(epoch 2, step 0)" in again.stderr
    assert numbers(run) == numbers(run_dir(short_sweep, combiner_name(choice)))

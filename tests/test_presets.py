"""Published CelebA protocols as presets (experiment=kurin_celeba, experiment=famo_celeba): their
networks, heads and input preprocessing, per-combiner settings, and a run of each end to end on
the fake CelebA (scripts/make_fake_celeba.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_case, run_cli, run_dir
from omegaconf import OmegaConf

from mtbench.errors import MtbenchError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_fake_celeba.py"
#: small enough for 2 CPU cores: 40 images (32 train), 32x32, one epoch of two steps
SMALL = [
    "data.image_size=32",
    "trainer.epochs=1",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=64",
    "trainer.device=cpu",
    "trainer.num_threads=1",
]


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory) -> Path:
    return make_celeba(tmp_path_factory.mktemp("fake_celeba"))


def make_celeba(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_fake_celeba", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_fake_celeba(root, 40, seed=1)
    return root


def test_kurin_network_shapes():
    from mtbench.models.published import FamoCNN, KurinResNet18

    net = KurinResNet18()  # 64x64 inputs: an 8x8 final map pooled by 4 -> 2x2 x 512 channels
    assert net.rep_dim == 2048 and net.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 2048)
    assert isinstance(net.stem_dropout, torch.nn.Dropout2d) and net.stem_dropout.p == 0.25
    assert all(b.dropout.p == 0.5 for b in net.layers) and len(net.layers) == 8 and net.rep_dropout.p == 0.5
    convs = [m for m in FamoCNN().modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(convs) == 9 and FamoCNN().eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_two_way_softmax_heads_are_nll_of_log_softmax():
    from mtbench.data.base import BinaryAttributeTask, Split

    empty = Split(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 3))
    task = BinaryAttributeTask("t", ["a", "b", "c"], empty, empty, empty)
    task.two_way = True
    assert task.head_spec().outputs == 6
    out = torch.randn(5, 6)
    y = (torch.rand(5, 3) < 0.5).float()
    expected = torch.stack(
        [F.nll_loss(F.log_softmax(out[:, 2 * j : 2 * j + 2], dim=1), y[:, j].long()) for j in range(3)]
    )
    assert torch.allclose(task.losses(out, y), expected, atol=1e-6)
    assert torch.allclose(task.scores(out), torch.softmax(out.view(5, 3, 2), dim=-1)[..., 1])


def test_full_image_preprocessing(celeba_root):
    from PIL import Image

    from mtbench.data.celeba import decode_image

    path = next((celeba_root / "img_align_celeba").glob("*.jpg"))
    with Image.open(path) as im:
        full = np.asarray(im.convert("RGB"))
    near = decode_image(path, 16, "full_nearest")
    # PIL's nearest neighbour: pixel (i, j) of the 16x16 output is the source pixel at the centre of its cell
    rows = [min(int((i + 0.5) * full.shape[0] / 16), full.shape[0] - 1) for i in range(16)]
    cols = [min(int((j + 0.5) * full.shape[1] / 16), full.shape[1] - 1) for j in range(16)]
    assert np.array_equal(near, full[np.ix_(rows, cols)])
    assert decode_image(path, 16, "full").shape == (16, 16, 3)
    assert not np.array_equal(decode_image(path, 16, "full"), decode_image(path, 16))  # not the centred crop


def test_per_combiner_settings_and_the_command_line_wins():
    from mtbench.cli_config import _apply_per_combiner

    # as Hydra composes it for `trainer.lr=0.002` on the command line
    cfg = OmegaConf.create({"trainer": {"lr": 0.002, "weight_decay": 1e-3}, "combiner": {"name": "mgda", "normalization": "none"},
                            "per_combiner": {"mgda": {"trainer": {"lr": 5e-4, "weight_decay": 1e-4}, "combiner": {"normalization": "loss+"}}}})  # fmt: skip
    _apply_per_combiner(cfg, ["trainer.lr=0.002"])
    assert cfg.trainer.lr == 0.002 and cfg.trainer.weight_decay == 1e-4 and cfg.combiner.normalization == "loss+"
    bad = OmegaConf.create({"combiner": {"name": "mgda"}, "per_combiner": {"mgda": {"model": {"width": 3}}}})
    with pytest.raises(MtbenchError, match="trainer.. and combiner.. keys only"):
        _apply_per_combiner(bad, [])


def _run_preset(preset: str, combiner: str, extra: list[str], celeba_root, tmp_path) -> dict:
    """``experiment=<preset>`` on the fake CelebA, SMALL sizes: the run's metrics.json."""
    args = [
        f"experiment={preset}",
        f"data.root={celeba_root}",
        "data.cache_dir=" + str(tmp_path / "cache"),
        *extra,
        *SMALL,
    ]
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir(tmp_path / "results" / preset, combiner) / "metrics.json").read_text())


def test_kurin_celeba_end_to_end(celeba_root, tmp_path):
    m = _run_preset("kurin_celeba", "mgda", ["combiner=mgda"], celeba_root, tmp_path)
    assert m["status"] == "completed" and m["model"] == "kurin_resnet18"
    assert set(m["test"]) == {"mean_acc", "min_acc"} and m["select_metric"] == "mean_acc"
    assert 0 <= m["test"]["min_acc"] <= m["test"]["mean_acc"] <= 100
    c = m["config"]
    assert c["trainer"]["lr"] == 0.0005 and c["trainer"]["weight_decay"] == 0.0001  # their MGDA-UB line
    assert c["combiner"]["normalization"] == "loss+" and c["combiner"]["level"] == "representation"
    assert c["trainer"]["scheduler"] == "step" and c["trainer"]["step_size"] == 1 and c["trainer"]["gamma"] == 0.95
    assert c["task"]["head"] == "softmax2" and c["task"]["preprocess"] == "full_nearest" and c["task"]["hflip"] is False
    assert c["model"]["input_size"] == 32
    assert "mean accuracy (%)" in (tmp_path / "results" / "kurin_celeba" / "table.md").read_text()


def test_famo_celeba_end_to_end(celeba_root, tmp_path):
    m = _run_preset("famo_celeba", "baseline", ["model.width=8"], celeba_root, tmp_path)
    assert m["status"] == "completed" and m["model"] == "famo_cnn"
    assert set(m["test"]) == {"mean_f1"} and m["select_metric"] == "mean_f1"
    c = m["config"]
    assert c["trainer"]["lr"] == 0.0003 and c["trainer"]["batch_size"] == 16 and c["trainer"]["scheduler"] == "none"
    assert c["task"]["preprocess"] == "full" and c["task"]["head"] == "sigmoid"
    assert "mean F1@0.5" in (tmp_path / "results" / "famo_celeba" / "table.md").read_text()


BAD_PRESET = [
    ("task.preprocess=crop", "task.preprocess='crop' is not allowed"),
    ("task.head=softmax", "task.head='softmax' is not allowed"),
]
for _arg, _ in BAD_PRESET:
    cli_case(
        __name__,
        _arg,
        "mtbench",
        lambda folder, arg=_arg: ["experiment=kurin_celeba", f"data.root={folder / 'celeba'}", arg, *SMALL],
        setup=lambda folder: make_celeba(folder / "celeba"),
    )


@pytest.mark.parametrize("arg, needle", BAD_PRESET)
def test_bad_preset_options(cli_runs, arg, needle):
    proc = cli_runs[__name__, arg]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]


def test_per_combiner_from_the_command_line(tmp_path):
    """+per_combiner.<c>.*: applied to that combiner's runs, and in their variant only."""
    from conftest import TINY

    proc = run_cli(
        "mtbench", ["-m", "combiner=baseline,mgda", "+per_combiner.mgda.trainer.lr=0.0005", *TINY], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "results" / "shapes40"
    mgda = json.loads((run_dir(results, "mgda") / "metrics.json").read_text())
    base = json.loads((run_dir(results, "baseline") / "metrics.json").read_text())
    assert mgda["config"]["trainer"]["lr"] == 0.0005 and base["config"]["trainer"]["lr"] == 0.003
    assert (
        "per_combiner.mgda.trainer.lr" in mgda["overrides"] and "per_combiner.mgda.trainer.lr" not in base["overrides"]
    )
    bad = run_cli("mtbench", ["+per_combiner.mgda.model.width=4", "combiner=mgda", *TINY], cwd=tmp_path)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "trainer.* and combiner.* keys only" in errors[0], bad.stderr[
        -2000:
    ]

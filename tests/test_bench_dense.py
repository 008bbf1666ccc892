"""scripts/bench_step.py task=nyuv2: the dense problem on random tensors of NYUv2's shape, the
model built through build_model by name (a stand-in tiny dense model here), every row's speed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_step.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_step_dense", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class TinyDenseHeads(nn.Module):
    """A 1x1 convolution per task on the shared map, outputs at the input resolution."""

    def __init__(self, channels: int, outputs: dict[str, int]):
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Conv2d(channels, c, 1) for k, c in outputs.items()})

    def forward(self, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(rep) for k, head in self.heads.items()}


def tiny_trunk(in_channels: int, **options):
    """A stand-in dense trunk (``model._target_``): one 3x3 convolution to 4 channels."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU()), 4


def test_dense_problem_shapes_and_losses():
    bench = bench_module()
    data = bench.dense_batches("nyuv2", (6, 8), 2, 1, torch.device("cpu"), 0)
    x, y = data[0]
    assert x.shape == (2, 3, 6, 8) and list(y) == ["segmentation", "depth", "normal"]
    assert y["segmentation"].dtype == torch.int64 and y["segmentation"].min() >= -1 and y["segmentation"].max() < 13
    assert y["depth"].shape == (2, 1, 6, 8) and (y["depth"] >= 0).all()
    norms = y["normal"].norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5) and (norms == 0).any()
    assert bench.DENSE_SHAPES["nyuv2"][0] == (3, 288, 384) and bench.DENSE_SHAPES["cityscapes"][1]["segmentation"] == 7
    # the losses against an independent computation: a perfect normal and depth cost 0
    outputs = {
        "segmentation": torch.randn(2, 13, 6, 8),
        "depth": y["depth"].clone(),
        "normal": 3 * y["normal"] + (y["normal"] == 0).float(),
    }
    losses = bench.dense_losses(outputs, y)
    valid = y["segmentation"] >= 0
    ce = -torch.log_softmax(outputs["segmentation"], 1).gather(1, y["segmentation"].clamp(min=0)[:, None])[:, 0]
    assert losses[0] == pytest.approx(float(ce[valid].mean()), rel=1e-5)
    assert losses[1] == pytest.approx(0.0, abs=1e-6) and losses[2] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_bench_step_nyuv2_with_a_stand_in_dense_model(tmp_path, monkeypatch):
    bench = bench_module()
    monkeypatch.setattr(bench.DenseShape, "make_heads", lambda self, dim: TinyDenseHeads(dim, self.outputs))
    monkeypatch.setattr(sys.modules[__name__], "tiny_trunk", tiny_trunk)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "bench.json"
    report = bench.main(
        ["task=nyuv2", "model=small_cnn", f"+model._target_={__name__}.tiny_trunk", "model.name=tiny_dense",
         "trainer.device=cpu", "trainer.num_threads=1", "--dense-size", "12x16", "--steps", "2", "--warmup", "1",
         "--slow-steps", "1", "--no-memory", "--combiners", "graddrop,pcgrad@params,mgda@representation",
         "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["problem"]["input_shape"] == [2, 3, 12, 16] and saved["problem"]["num_tasks"] == 3  # batch 2
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "graddrop", "pcgrad@params", "mgda@representation"]
    for row in rows.values():
        assert row["error"] is None and row["speed_vs_baseline"] > 0, row


@pytest.mark.slow
def test_bench_step_nyuv2_says_which_model_is_missing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "task=nyuv2", "model=no_such_dense_model", "--steps", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "bench_step: task=nyuv2 needs a dense model; model=no_such_dense_model is not registered here"
    )
    assert "Traceback" not in proc.stderr


def test_bench_step_nyuv2_refuses_a_model_without_dense_outputs(tmp_path):
    bench = bench_module()
    with pytest.raises(SystemExit, match="needs a dense model"):
        bench.main(
            ["task=nyuv2", "model=small_cnn", "model.width=2", "model.rep_dim=4", "trainer.device=cpu",
             "--dense-size", "8x8", "--combiners", "baseline", "--out", str(tmp_path / "b.json")]
        )  # fmt: skip

"""``predictions.pt``: a dense task's predictions on a few fixed test examples, for figures.

At the end of a completed run of a dense task (``Task.dense``), the run folder gets
``predictions.pt``: ``torch.save`` of a plain dict of tensors (``torch.load(path,
weights_only=True)`` reads it), from the reported model (the best-validation epoch's, or the
last epoch's with ``trainer.report=last_k``) on :data:`COUNT` test examples whose indices are
spread evenly over the test split (always the same for a split):

- ``index`` int64 [4]; ``image`` uint8 [4, 3, H, W] (the input before normalisation);
- for each trained task ``t``: ``t`` (the prediction) and ``t_target``: ``segmentation`` int64
  [4, H, W] (the argmax; target -1 = unlabelled), ``depth`` float32 [4, H, W] (target 0 =
  missing), ``normal`` float32 [4, 3, H, W] (the prediction L2-normalised; target (0, 0, 0) =
  missing).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["COUNT", "PREDICTIONS", "preview_indices", "predictions", "write_predictions"]

#: the file's name in the run folder
PREDICTIONS = "predictions.pt"

#: test examples kept
COUNT = 4


def preview_indices(n: int, count: int = COUNT) -> torch.Tensor:
    """``count`` indices spread evenly over ``0..n-1`` (first and last included; fewer when
    ``n < count``)."""
    if n <= count:
        return torch.arange(n, dtype=torch.int64)
    return torch.linspace(0, n - 1, count, dtype=torch.float64).round().to(torch.int64)


def _uint8(images: torch.Tensor) -> torch.Tensor:
    x = images.detach().float()
    if not images.is_floating_point():
        return images.to(torch.uint8)
    scale = 255.0 if float(x.max()) <= 1.0 + 1e-6 else 1.0  # [0, 1] floats, or already 0..255
    return (x * scale).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def predictions(model: torch.nn.Module, task: Any, prep: Any) -> dict[str, torch.Tensor]:
    """The dict ``predictions.pt`` holds (see the module docstring)."""
    split = task.test
    index = preview_indices(len(split))
    images = split.images[index]
    labels = {k: v[index] for k, v in split.labels.items()}
    model.eval()
    x, _ = prep(images, labels)
    _, outputs = model(x)
    out: dict[str, torch.Tensor] = {"index": index, "image": _uint8(images).cpu()}
    for t in task.task_names:
        pred = outputs[t].detach().float().cpu()
        target = labels[t].cpu()
        if t == "segmentation":
            out[t] = pred.argmax(1).to(torch.int64)
            out[f"{t}_target"] = target.to(torch.int64)
        elif t == "depth":
            out[t] = pred[:, 0].contiguous()
            out[f"{t}_target"] = target.float().reshape(pred.shape[0], *pred.shape[2:]).contiguous()
        else:
            out[t] = F.normalize(pred, dim=1)
            out[f"{t}_target"] = target.float().contiguous()
    return out


def write_predictions(model: torch.nn.Module, task: Any, prep: Any, path: Path) -> None:
    """Write ``predictions.pt`` to ``path`` atomically."""
    from mtbench.files import atomic_write

    buf = io.BytesIO()
    torch.save(predictions(model, task, prep), buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), binary=True)

"""``model.pt``: the trained weights a completed run keeps (``trainer.save_model``), written by
the trainer and read by ``mtbench-eval`` (a plain torch file, loaded with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbench.errors import MtbenchError

__all__ = ["MODEL", "read_model", "save_model"]

#: the trained weights a completed run keeps (``trainer.save_model``); ``mtbench-eval`` reads them
MODEL = "model.pt"


def save_model(path: Path, state_dict: dict[str, Any], which: str, epoch: int) -> None:
    """``torch.save`` of ``{"state_dict", "which" (best | last), "epoch"}`` to ``path``, atomically
    (a plain torch file: ``torch.load(path)["state_dict"]`` reads it)."""
    import io

    import torch

    from mtbench.files import atomic_write

    buf = io.BytesIO()
    torch.save({"format": "mtbench-model", "which": which, "epoch": int(epoch), "state_dict": state_dict}, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), binary=True)


def read_model(path: Path) -> dict[str, Any]:
    """``model.pt`` loaded with ``weights_only=True`` (a file that would run code, a truncated
    or empty one: a one-line error naming it)."""
    from mtbench.train.checkpoint import load_weights_only

    fix = "re-run the run with force=true to write it again"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MtbenchError(f"model file {path} cannot be read ({e.strerror or e}); {fix}") from None
    if not raw:
        raise MtbenchError(f"model file {path} is empty; {fix}")
    saved = load_weights_only(raw, path, "model file", fix)
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise MtbenchError(f"model file {path} is not an mtbench model (no state_dict); {fix}")
    return saved

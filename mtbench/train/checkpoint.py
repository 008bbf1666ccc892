"""Checkpoint files: a checksummed ``torch.save`` payload, written atomically.

A checkpoint file is one header line, ``mtbench-checkpoint sha256=<64 hex digits>\\n``,
followed by the bytes of ``torch.save(payload)``; the digest is the SHA-256 of those bytes.
Loading checks the digest first, so a file whose bytes changed on disk (a bad sector, a
partial copy) is refused with a one-line error naming it instead of being resumed silently.
Files without the header (written by earlier versions) load without the check.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from mtbench.errors import MtbenchError
from mtbench.files import atomic_write

MAGIC = b"mtbench-checkpoint sha256="
_HEADER = re.compile(rb"mtbench-checkpoint sha256=([0-9a-f]{64})\n")
#: temporary files of :func:`save`: ``.<name>.<pid>.tmp`` next to the checkpoint
_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.tmp")


def save(payload: Any, path: Path) -> None:
    """Serialize ``payload`` with its SHA-256 into a temporary file in the same folder, then
    rename it onto ``path``: never half a checkpoint."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the name remove_stale_tmp knows
    header = MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"

    def write(f) -> None:
        f.write(header)
        f.write(data)

    atomic_write(path, write, binary=True, tmp=tmp)


def load(path: Path) -> Any:
    """The payload of a checkpoint file (on the CPU), its checksum verified.

    Raises ``MtbenchError`` naming the file when the bytes do not match the stored SHA-256.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(MAGIC):
        header = _HEADER.match(raw)
        if header is None:
            raise MtbenchError(
                f"checkpoint {path} is corrupt (its SHA-256 header is damaged); delete it to start the run again, or use force=true"
            )
        body = memoryview(raw)[header.end() :]
        if hashlib.sha256(body).hexdigest() != header.group(1).decode():
            raise MtbenchError(
                f"checkpoint {path} is corrupt (its SHA-256 differs from the one stored when it was written); "
                "delete it to start the run again, or use force=true"
            )
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(folder: Path, name: str) -> list[Path]:
    """Delete the temporary files ``.<name>.<pid>.tmp`` in ``folder`` left by a process that
    is gone (killed while saving); return them."""
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp"):
        m = _TMP.fullmatch(p.name)
        if m is None or m.group("name") != name:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another process is writing it now
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


#: the checkpoint file in a run folder
CHECKPOINT = "checkpoint.pt"


def save_run(path: Path, state: Any, model, optimizer, scheduler, combiner, gens: dict[str, torch.Generator]) -> None:
    """Write a run's checkpoint: ``state`` (a ``RunState``), the model, optimizer, scheduler and
    combiner states, the run's generators (``rng.run_generators``) and torch's global one."""
    payload = {
        "format": 1,
        "state": state.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "combiner": combiner.state_dict(),
        "rng": {name: g.get_state() for name, g in gens.items()},
        "torch_rng": torch.get_rng_state(),
    }
    save(payload, path)


def resume_run(path: Path, model, optimizer, scheduler, combiner, gens: dict[str, torch.Generator]) -> dict[str, Any]:
    """Load the checkpoint ``path`` into the run's objects (see :func:`save_run`); return its
    ``state`` dict. Any unreadable checkpoint is a one-line error naming the file."""
    try:
        ckpt = load(path)  # a checksum mismatch: its own one-line error
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        combiner.load_state_dict(ckpt["combiner"])
        for name, g in gens.items():
            g.set_state(ckpt["rng"][name])
        torch.set_rng_state(ckpt["torch_rng"])
    except MtbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        raise MtbenchError(
            f"checkpoint {path} cannot be resumed ({type(e).__name__}: {e}); delete it to start the run again, or use force=true"
        ) from None
    return ckpt["state"]

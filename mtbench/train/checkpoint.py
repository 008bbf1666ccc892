"""Checkpoint files: a checksummed ``torch.save`` payload that loads without running code,
bound to its run, written atomically.

A checkpoint file is one header line, ``mtbench-checkpoint v2 sha256=<64 hex digits>\\n``,
followed by the bytes of ``torch.save(payload)``; the digest is the SHA-256 of those bytes.
Loading checks the digest first (a file whose bytes changed on disk is refused with a one-line
error naming it), then reads the payload with ``torch.load(..., weights_only=True)``: only
tensors, numbers, strings, lists, tuples and dicts, so a crafted file cannot run code. The
payload holds nothing else (the RNG states are tensors; NumPy values are converted on save).

A run's checkpoint records the run it belongs to (:func:`run_identity`: the hash of the
settings that change what it computes, its seed and its combiner); resuming a checkpoint of
another run, or one whose position disagrees with its own history (an epoch rewritten), is a
one-line error naming the file. Files written by earlier versions (no header, or the v1 header)
are refused without being read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from mtbench.errors import MtbenchError
from mtbench.files import atomic_write

MAGIC = b"mtbench-checkpoint v2 sha256="
#: the header of checkpoints written by earlier versions (their payload may need code to load)
OLD_MAGIC = b"mtbench-checkpoint sha256="
_HEADER = re.compile(rb"mtbench-checkpoint v2 sha256=([0-9a-f]{64})\n")
#: temporary files of :func:`save`: ``.<name>.<pid>.tmp`` next to the checkpoint
_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.tmp")
#: what a refused checkpoint's message ends with
_FIX = "delete it to start the run again, or use force=true"


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays as tensors and NumPy scalars as Python numbers (what
    ``weights_only`` loading accepts); tuples, lists and dicts walked."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def save(payload: Any, path: Path) -> None:
    """Serialize ``payload`` (made plain: see :func:`_plain`) with its SHA-256 into a temporary
    file in the same folder, then rename it onto ``path``: never half a checkpoint."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(_plain(payload), buf)
    data = buf.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the name remove_stale_tmp knows
    header = MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"

    def write(f) -> None:
        f.write(header)
        f.write(data)

    atomic_write(path, write, binary=True, tmp=tmp)


def load_weights_only(data: bytes | memoryview, path: Path, what: str, fix: str) -> Any:
    """``torch.load(data, weights_only=True)`` on the CPU; anything it refuses (a file that
    names code, a damaged or truncated file) is a one-line ``MtbenchError`` naming ``path``."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure is the same problem for the user
        first = " ".join(str(e).split())[:200] or type(e).__name__
        if "Unsupported global" in first or "weights_only" in first.lower():
            why = "it holds objects that would run code to load, which mtbench never does"
        else:
            why = f"it is damaged or not a torch file ({type(e).__name__}: {first})"
        raise MtbenchError(f"{what} {path} cannot be loaded: {why}; {fix}") from None


def load(path: Path) -> Any:
    """The payload of a checkpoint file (on the CPU), its checksum verified, loaded with
    ``weights_only=True``. Raises ``MtbenchError`` naming the file when the bytes do not match
    the stored SHA-256, when it was written by an earlier version, or when it is not plain data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MtbenchError(f"checkpoint {path} cannot be read ({e.strerror or e}); {_FIX}") from None
    if not raw.startswith(MAGIC):
        which = (
            "an earlier mtbench" if raw.startswith(OLD_MAGIC) or raw[:2] in (b"PK", b"\x80\x02") else "something else"
        )
        raise MtbenchError(
            f"checkpoint {path} is not a checkpoint of this mtbench (written by {which}; it is not loaded, "
            f"since an older format may run code); {_FIX}"
        )
    header = _HEADER.match(raw)
    if header is None:
        raise MtbenchError(f"checkpoint {path} is corrupt (its SHA-256 header is damaged); {_FIX}")
    body = memoryview(raw)[header.end() :]
    if hashlib.sha256(body).hexdigest() != header.group(1).decode():
        raise MtbenchError(
            f"checkpoint {path} is corrupt (its SHA-256 differs from the one stored when it was written); {_FIX}"
        )
    return load_weights_only(body, path, "checkpoint", _FIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):  # no such process id on this system
        return False
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


def run_identity(cfg: Any) -> dict[str, Any]:
    """What a checkpoint is bound to: ``{"settings": <SHA-256 of the resolved settings that
    change what the run computes>, "seed", "combiner"}`` (the settings: every key of the resolved
    config that ``mtbench.variant.is_identity_key`` keeps; where files go and how fast a run goes
    do not count, so a run moved to another machine or folder still resumes)."""
    from omegaconf import DictConfig, OmegaConf

    from mtbench.variant import flatten, is_identity_key

    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    kept = {k: v for k, v in flatten(resolved).items() if is_identity_key(k)}
    text = json.dumps(kept, sort_keys=True, default=str)
    combiner = (resolved.get("combiner") or {}).get("name") if isinstance(resolved.get("combiner"), dict) else None
    return {
        "settings": hashlib.sha256(text.encode()).hexdigest(),
        "seed": int(resolved.get("seed", 0)),
        "combiner": str(combiner),
    }


def save_run(
    path: Path, state: Any, model, optimizer, scheduler, combiner, gens: dict[str, torch.Generator], run: dict
) -> None:
    """Write a run's checkpoint: ``run`` (:func:`run_identity`), ``state`` (a ``RunState``), the
    model, optimizer, scheduler and combiner states, the run's generators
    (``rng.run_generators``) and torch's global one."""
    payload = {
        "format": 2,
        "run": dict(run),
        "state": state.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "combiner": combiner.state_dict(),
        "rng": {name: g.get_state() for name, g in gens.items()},
        "torch_rng": torch.get_rng_state(),
    }
    save(payload, path)


def check_run(path: Path, ckpt: Any, run: dict[str, Any], steps_per_epoch: int | None = None) -> None:
    """Refuse (one line naming ``path``) a checkpoint that is not this run's (``run``: the
    run's :func:`run_identity`) or whose position disagrees with its own history."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != 2 or not isinstance(ckpt.get("state"), dict):
        raise MtbenchError(f"checkpoint {path} is not an mtbench run checkpoint; {_FIX}")
    saved = ckpt.get("run") if isinstance(ckpt.get("run"), dict) else {}
    names = {"settings": "other settings", "seed": "seed", "combiner": "combiner"}
    for key, what in names.items():
        if saved.get(key) != run[key]:
            shown = "" if key == "settings" else f" {saved.get(key)!r} (this run: {run[key]!r})"
            raise MtbenchError(f"checkpoint {path} belongs to another run ({what}{shown}); it is not resumed; {_FIX}")
    state = ckpt["state"]
    epoch, step, history = state.get("epoch"), state.get("step"), state.get("history")
    consistent = (
        isinstance(epoch, int)
        and isinstance(step, int)
        and isinstance(history, list)
        and epoch >= 1
        and step >= 0
        and (steps_per_epoch is None or step <= steps_per_epoch)
        and [row.get("epoch") if isinstance(row, dict) else None for row in history] == list(range(1, epoch))
    )
    scheduler = ckpt.get("scheduler")
    if consistent and isinstance(scheduler, dict) and "last_epoch" in scheduler:
        consistent = scheduler["last_epoch"] == epoch - 1
    if not consistent:
        raise MtbenchError(
            f"checkpoint {path} is inconsistent (its epoch {epoch!r}, step {step!r} disagree with its history "
            f"or schedule); it is not resumed; {_FIX}"
        )


def resume_run(
    path: Path,
    model,
    optimizer,
    scheduler,
    combiner,
    gens: dict[str, torch.Generator],
    run: dict[str, Any],
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Load the checkpoint ``path`` into the run's objects (see :func:`save_run`), after
    :func:`check_run`; return its ``state`` dict. Any unreadable checkpoint is a one-line error
    naming the file."""
    ckpt = load(path)  # a checksum mismatch, an old or unsafe file: its own one-line error
    check_run(path, ckpt, run, steps_per_epoch)
    try:
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
        first = " ".join(str(e).split())[:200]
        raise MtbenchError(f"checkpoint {path} cannot be resumed ({type(e).__name__}: {first}); {_FIX}") from None
    return ckpt["state"]

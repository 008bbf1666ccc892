"""Writing a file atomically: a temporary file in the same folder, flushed to disk, then
renamed onto the target, so a reader never sees half a file, whatever happens to the writer.

Every file mtbench writes whole (``metrics.json``, ``history.csv``, the tables, the plots,
checkpoints) goes through :func:`atomic_write`. It imports nothing of mtbench, so every
sub-package may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: Path | str, write: Callable[[IO[Any]], None], *, binary: bool = False, tmp: Path | str | None = None
) -> Path:
    """Create ``path`` with the content that ``write(file)`` writes into an open file (text in
    UTF-8, or bytes with ``binary``): into a temporary file in the same folder, flushed and
    synced, then renamed onto ``path``. The temporary file is ``tmp`` when given, else a unique
    ``.<name>.<random>.tmp``; it is removed on any error. The folder is created if needed; the
    file gets the usual permissions (0666 less the umask). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(name)
    else:
        tmp_path = Path(tmp)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_bytes(path: Path | str, data: bytes | memoryview, *, tmp: Path | str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), binary=True, tmp=tmp)

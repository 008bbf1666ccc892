"""One process at a time in a run folder: the ``.lock`` file.

A process that trains (or skips, or resumes) a run takes ``<run folder>/.lock`` and holds it
until the run's final ``metrics.json`` is written. The lock holds JSON ``{"host", "pid",
"started", "token"}`` and is created atomically and complete (a temporary file ``os.link``-ed
into place, which fails when a lock exists; this works on NFS too).

A lock is stale, and taken over, when it was taken on this host and its process is gone
(``os.kill(pid, 0)``); or on another host and not refreshed for ``STALE_AFTER_S`` seconds (the
holder touches it every ``HEARTBEAT_S`` seconds from a background thread; this assumes the
hosts' clocks agree to within a few minutes); or its content is unreadable and it is older than
``HEARTBEAT_S`` seconds. Otherwise ``RunLock`` raises ``Locked`` and the caller skips the run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("mtbench")

LOCK = ".lock"
#: seconds between two refreshes of a held lock's mtime
HEARTBEAT_S = 30.0
#: a lock of another host whose mtime is older than this is stale
STALE_AFTER_S = 600.0

#: tokens of the locks this process holds
_HELD: set[str] = set()


class Locked(Exception):
    """The run folder is held by another live process; ``holder`` is ``host:pid``."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path.parent} is being run by {holder}")
        self.holder = holder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):  # not a process id of this system
        return False
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's content, or None when it is unreadable (or gone)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(path: Path, info: dict[str, Any] | None, now: float | None = None) -> str | None:
    """Why the lock at ``path`` (content ``info``) is stale, or None when its holder may be alive."""
    now = time.time() if now is None else now
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return "gone"
    if info is None:
        return f"unreadable and {age:.0f} s old" if age > HEARTBEAT_S else None
    host, pid = info.get("host"), info.get("pid")
    if host == socket.gethostname():
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return "its pid is not a number"
        if pid == os.getpid():
            return None if info.get("token") in _HELD else "left by an earlier run of this process id"
        return None if _alive(pid) else f"process {pid} is gone"
    return f"not refreshed for {age:.0f} s" if age > STALE_AFTER_S else None


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock``; raises ``Locked`` when a live
    process holds it; takes a stale lock over (logging why); removes the lock on every exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.token = uuid.uuid4().hex
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking the lock -------------------------------------------------------------------
    def _create(self) -> bool:
        """Link a complete lock file into place; False when a lock exists already."""
        tmp = self.path.with_name(f"{LOCK}.{self.token}.tmp")
        try:
            tmp.write_text(json.dumps(self.info) + "\n", encoding="utf-8")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive creation instead
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(self.info) + "\n")
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, seen: bytes) -> None:
        """Remove the stale lock whose bytes were ``seen``: renamed aside first, so that of two
        processes taking it over at once only one removes it; a fresh lock renamed aside by
        mistake (taken between the read and the rename) is put back."""
        aside = self.path.with_name(f"{LOCK}.{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_bytes() != seen:
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            _HELD.add(self.token)  # before the link: an exit at any point removes the lock
            if self._create():
                self._start_heartbeat()
                return
            _HELD.discard(self.token)
            try:
                seen = self.path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                info = json.loads(seen)
                info = info if isinstance(info, dict) else None
            except ValueError:
                info = None
            reason = stale_reason(self.path, info)
            if reason is None:
                holder = f"{info.get('host')}:{info.get('pid')}" if info else "another process"
                raise Locked(self.path, holder)
            if reason != "gone":
                log.warning(f"mtbench: {self.path} is stale ({reason}); taking the run over")
                self._take_over(seen)
            time.sleep(0.01)
        raise Locked(self.path, "another process (the lock keeps changing)")

    # -- holding it ------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="mtbench-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the lock if it is still this process's (never another's)."""
        self._stop.set()
        if self.token not in _HELD:
            return
        _HELD.discard(self.token)
        info = read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        try:
            self.acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

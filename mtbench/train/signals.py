"""SIGTERM/SIGINT during a run (``StopFlag``) and the places where fault-injection tests pause it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("mtbench")

__all__ = ["AGAIN", "Interrupted", "StopFlag", "StopNow", "pause_point"]


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; re-run the same command to resume")
        self.signum = signum


class StopNow(KeyboardInterrupt):
    """Raised by the signal handler itself: at a second signal (``again``), or at a first one
    where there is no step to finish (setup, the final test evaluation). A ``KeyboardInterrupt``,
    so that code cleaning up after Ctrl-C cleans up after it too."""

    def __init__(self, signum: int, where: str, again: bool = False):
        name = signal.Signals(signum).name
        text = (
            f"stopped by a second {name}"
            if again
            else f"interrupted by {name} {where}; re-run the same command to resume"
        )
        super().__init__(text)
        self.signum = signum
        self.again = again

    def __str__(self) -> str:
        return str(self.args[0])


#: the line printed when a second signal stops a run at once
AGAIN = "mtbench: interrupted again, stopping now"


class StopFlag:
    """SIGTERM/SIGINT handling for a whole run (main thread only).

    During the training steps (``defer()``, the default) a first signal sets ``signum``, which
    the loop checks after each step (it then checkpoints and raises ``Interrupted``); where
    there is nothing to finish (``now(where)``: setup, final test evaluation) a first signal
    raises ``StopNow`` at once. A second signal raises ``StopNow(again=True)``; a third one
    (while that unwinds) ends the process with ``os._exit``. Not installed under submitit (it
    owns the signals there and requeues preempted jobs; the per-epoch checkpoints make the
    requeued job resume).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.immediate = False
        self.where = ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.count += 1
        if self.count > 2:  # still unwinding after the second one
            print(AGAIN, file=sys.stderr, flush=True)
            os._exit(128 + signum)
        if self.count == 2:
            raise StopNow(signum, "", again=True)
        self.signum = signum
        if self.immediate:
            log.warning(f"mtbench: {signal.Signals(signum).name} received {self.where}: stopping")
            raise StopNow(signum, self.where)
        log.warning(f"mtbench: {signal.Signals(signum).name} received: finishing this step, then checkpointing")

    def now(self, where: str) -> None:
        """From here on a first signal stops at once; raises ``Interrupted`` if one came already."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)
        self.where, self.immediate = where, True

    def defer(self) -> None:
        """From here on a first signal only sets ``signum`` (checked after each step)."""
        self.immediate = False

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread() and "SUBMITIT_EXECUTOR" not in os.environ:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def pause_point(name: str) -> None:
    """A place where the fault-injection tests stop a run: with ``MTBENCH_PAUSE_AT=name`` the
    process creates the file ``MTBENCH_PAUSE_MARKER`` and waits, up to ``MTBENCH_PAUSE_S``
    seconds (default 60), until that file is removed. Does nothing otherwise."""
    if os.environ.get("MTBENCH_PAUSE_AT") != name:
        return
    marker = Path(os.environ.get("MTBENCH_PAUSE_MARKER", "mtbench.paused"))
    marker.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + float(os.environ.get("MTBENCH_PAUSE_S", "60"))
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)

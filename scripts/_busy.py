"""Background processes that keep CPU cores busy while a benchmark measures (the added load of
scripts/bench_threads.py, bench_speed_measured.py and bench_speed_stability.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: a Python process spinning on one core until it is killed
FOREVER = "while True:\n    pass\n"
#: the same, stopping by itself after ``seconds``
FOR_SECONDS = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


@contextmanager
def busy_processes(count: int, seconds: float | None = None) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes (none if ``count`` <= 0) each keeping a core busy while the block runs,
    killed when it ends; with ``seconds``, each also stops by itself after that long."""
    code = FOREVER if seconds is None else FOR_SECONDS.format(seconds=seconds)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(max(0, count))]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()

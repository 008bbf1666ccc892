"""scripts/_busy.py, the added load of the benchmarks on a busy machine: its processes run while the
block runs and are gone after it; the three scripts that use it start from any folder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _busy():
    spec = importlib.util.spec_from_file_location("_busy", ROOT / "scripts" / "_busy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_busy_processes_run_during_the_block_and_are_killed_after_it():
    busy = _busy()
    with busy.busy_processes(0) as none, busy.busy_processes(-1) as negative:
        assert none == [] and negative == []
    with busy.busy_processes(2) as procs:
        time.sleep(0.2)
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None and p.returncode < 0 for p in procs)  # killed, reaped
    with pytest.raises(RuntimeError), busy.busy_processes(1) as procs:
        raise RuntimeError  # an error in the block still kills them
    assert procs[0].returncode is not None and procs[0].returncode < 0


def test_timed_busy_process_stops_by_itself():
    busy = _busy()
    with busy.busy_processes(1, seconds=0.3) as (proc,):
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize("script", ["bench_threads", "bench_speed_measured", "bench_speed_stability"])
def test_the_scripts_that_use_it_start_from_another_folder(tmp_path, script):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--busy" in proc.stdout

"""``mtbench.nn.GradDrop`` inside a user's DistributedDataParallel model and
``mtbench.backward(..., process_group=...)``: examples/ddp_graddrop.py (two gloo processes on
the CPU) trains both on half batches per rank and prints how far the parameters are from the
same steps in one process on the whole batches."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_graddrop.py"


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["graddrop", "mgda"])
def test_the_ddp_example_equals_one_process(tmp_path, combiner):
    args = [sys.executable, str(EXAMPLE), "--steps", "3", "--combiner", combiner]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.findall(r"largest difference (\S+)", proc.stdout)
    moved = re.findall(r"moved the parameters by up to (\S+)\)", proc.stdout)
    assert len(found) == 2 and len(moved) == 1, proc.stdout
    assert float(moved[0]) > 1e-3  # the steps did something
    layer, backward = (float(x) for x in found)
    assert layer < 1e-6 and backward < 1e-6, proc.stdout

"""Smoke test of scripts/fault_inject.py (``--quick``): it runs, and its cases hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_inject.py"


def test_fault_inject_quick(tmp_path):
    out = tmp_path / "fault_inject.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    cases = {c["case"]: c for c in report["cases"]}
    assert set(cases) == {
        "sigterm@test",
        "sigkill@mid_run",
        "second_sigint",
        "duplicate_sweep_x2",
        "corrupt_metrics_truncated_completed",
        "badopt_lr_negative",
    }
    assert all(c["held"] for c in cases.values()), [(c["case"], c["problems"]) for c in cases.values() if not c["held"]]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["total"] == {"tried": 6, "held": 6}
    assert "| **all** | **6** | **6** |" in proc.stdout
    assert cases["sigterm@test"]["details"]["status"] == "interrupted"
    # each copy exits 0, or 3 when it skipped a run the other held (the held-runs status)
    assert set(cases["duplicate_sweep_x2"]["details"]["exits"]) <= {0, 3}

"""The jobs of one ``mtbench`` command, whatever launcher ran them.

The submitting process names a manifest file (``MTBENCH_SWEEP_MANIFEST``, inherited by the
launcher's worker processes and cluster jobs); every job appends one JSON line to it when it ends:
its run folder and how it ended (``completed``, ``failed``, ``interrupted``, ``refused`` for a
bad input, ``skipped`` for a run another process holds). Once the launcher returns, the
submitting process reads the manifest to write each results folder's tables and to choose its
exit status from the runs' statuses on disk (a job killed before it could write its line
counts by its ``metrics.json``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from mtbench.report.runs import METRICS

ENV = "MTBENCH_SWEEP_MANIFEST"

#: how a job ended, from worst to best, for the exit status
FAILING = ("refused", "failed", "interrupted", "running")


def start(results_dir: str | Path) -> Path:
    """Name this command's manifest (under ``<results_dir>/.sweeps/``) and export it to the jobs."""
    path = Path(results_dir).resolve() / ".sweeps" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    os.environ[ENV] = str(path)
    return path


def record(run_dir: Path | str, outcome: str, reason: str | None = None) -> None:
    """Append this job's line to the manifest (nothing when no manifest was named)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = (
        json.dumps({"run_dir": str(Path(run_dir).resolve()), "outcome": outcome, "reason": reason, "pid": os.getpid()})
        + "\n"
    )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))  # one short write in append mode: lines never interleave
        finally:
            os.close(fd)
    except OSError:
        pass  # the manifest only helps the summary; the run's own files are the record


def jobs(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The manifest's lines (the last line per run folder wins)."""
    path = path or os.environ.get(ENV)
    if not path or not Path(path).is_file():
        return []
    out: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            job = json.loads(line)
            out[str(job["run_dir"])] = job
        except (ValueError, KeyError, TypeError):
            continue
    return list(out.values())


def status_on_disk(job: dict[str, Any]) -> str:
    """A job's outcome as its run folder shows it (``refused`` and ``skipped`` jobs have none of their own)."""
    if job.get("outcome") in ("refused", "skipped"):
        return str(job["outcome"])
    try:
        status = json.loads((Path(job["run_dir"]) / METRICS).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    return str(status or job.get("outcome") or "failed")


def folders(path: Path | str | None = None) -> list[Path]:
    """The results folders (``results/<name>``) the jobs wrote into, in first-seen order."""
    seen: dict[Path, None] = {}
    for job in jobs(path):
        parents = Path(job["run_dir"]).parents  # results/<name>/runs/<combiner>/<variant>/seed=<seed>
        if len(parents) > 3 and parents[2].name == "runs":
            seen.setdefault(parents[3], None)
    return list(seen)


#: the exit status when every job that did not complete is held by another live process
#: (a second copy of a command that is running): that process owns those runs
HELD = 3


def finish(path: Path | str | None = None) -> tuple[int, list[str]]:
    """Exit status of the command (0; 2 for a refused job; else 1 for a failed or interrupted
    run; else ``HELD`` (3) when runs were skipped because another process holds them) and one
    line per job that did not complete; removes the manifest (and those of dead commands)."""
    path = path or os.environ.get(ENV)
    lines, code, held = [], 0, False
    for job in jobs(path):
        status = status_on_disk(job)
        if status in FAILING:
            code = max(code, 2 if status == "refused" else 1)
            lines.append(f"{job['run_dir']}: {status}" + (f" ({job['reason']})" if job.get("reason") else ""))
        elif status == "skipped":
            held = True
            lines.append(
                f"{job['run_dir']}: owned by another process" + (f" ({job['reason']})" if job.get("reason") else "")
            )
    if path:
        discard(path)
    return code or (HELD if held else 0), lines


def discard(path: Path | str) -> None:
    """Remove the manifest ``path``, those of commands no longer alive beside it (an interrupted
    or killed sweep's), and the ``.sweeps`` folder when it is left empty."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for other in path.parent.glob("*.jsonl"):
        pid = other.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            other.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True

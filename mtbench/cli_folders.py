"""The folders a command writes to, checked before Hydra creates them (a file in the way, no
write permission, a full disk: one line and exit 2, not Hydra's traceback); and what Hydra left
in the folder of a run that was refused, removed."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from mtbench.cli_argv import _error


def _check_folder(path: Path, prefix: str = "", file_fix: str = "", write_fix: str = "") -> None:
    """One line and exit 2 when ``path``, or its first existing parent, is a file or is not
    writable: ``<prefix><parent> is a file, not a folder; <file_fix>`` (or ``is not writable``)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                _error(f"{prefix}{parent} is a file, not a folder; {file_fix}")
            if not os.access(parent, os.W_OK | os.X_OK):
                _error(f"{prefix}{parent} is not writable; {write_fix}")
            break


def _check_results_dir(argv: list[str]) -> None:
    """Fail early, in one line, when the results folder cannot be created (Hydra would give a
    traceback: a file in the way, a read-only disk, ``/proc``), or when ``name=`` would put
    the runs outside it (``name=../x``: a name is one folder name)."""
    root = "results"
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "results_dir":
            root = value
        if key.lstrip("+") == "name":
            for name in value.split(",") if value else [value]:
                if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
                    _error(
                        f"name={name} is not a plain folder name (it would write outside results_dir); "
                        "choose a name without '/' or '..', e.g. name=my_experiment"
                    )
    for each in root.split(",") if root else [root]:
        _check_folder(Path(each), f"results_dir={each}: ", "choose another results_dir", "choose another results_dir")
        parent = next((p for p in [Path(each), *Path(each).parents] if p.exists()), None)
        if parent is not None and parent.is_dir():  # can a folder be made there (root passes os.access)?
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".mtbench-check.", dir=parent))
            except OSError as e:
                _error(
                    f"results_dir={each}: cannot create it in {parent} ({e.strerror or e}); choose another results_dir"
                )


def _check_run_folder(path: Path) -> None:
    """One line and exit 2 when the run folder ``path``, or its first existing parent, is a file
    or not writable, or a file Hydra and the log write into it is not writable."""
    _check_folder(
        path,
        "",
        "move it away (or set name=... or results_dir=...)",
        "make it writable (chmod u+w) or set name=... or results_dir=...",
    )
    inner = [path / ".hydra", path / "mtbench.log", *(path / ".hydra").glob("*.yaml")]
    for p in inner:
        if p.exists() and not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
            _error(f"{p} is not writable; make it writable (chmod u+w) or set name=... or results_dir=...")


def _check_sweep_folder(sweep: Path, combiners: list[str] | None = None) -> None:
    """The sweep's folder checked like a run folder; under its ``runs/`` (the folders of
    ``combiners``, all when None), a file where a combiner, variant or seed folder belongs,
    and a run folder that is not writable, are errors."""
    _check_run_folder(sweep)
    runs = sweep / "runs"
    if not runs.is_dir():
        return
    names = combiners or ["*"]
    entries = [e for n in names for e in (*runs.glob(n), *runs.glob(f"{n}/*"), *runs.glob(f"{n}/*/seed=*"))]
    for entry in sorted(set(entries)):
        if not entry.is_dir():
            _error(f"{entry} is a file, not a folder: it stands where a run's folder belongs; move it away")
        if entry.name.startswith("seed="):
            _check_run_folder(entry)


def _check_space(path: Path, size: int = 1 << 16) -> None:
    """One line and exit 2 when the disk of ``path`` (its first existing folder) cannot take
    ``size`` bytes: Hydra writes the run's ``.hydra/*.yaml`` before mtbench could report a full
    disk itself (Hydra would print a traceback)."""
    folder = next((p for p in [path, *path.parents] if p.is_dir()), None)
    if folder is None:
        return
    probe = folder / f".mtbench-space.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _error(f"no space left on the disk of {folder}; free some disk space (or set results_dir=...) and re-run")
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _remove_leftovers(run_dir: Path) -> None:
    """A refused run writes nothing: remove what Hydra put in ``run_dir`` before the job started
    (``.hydra/``, ``mtbench.log``) when nothing else is there, and the folders above it that this
    leaves empty (up to ``<results_dir>/<name>``). A folder holding another run's files is left alone."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.name not in (".hydra", "mtbench.log") for p in run_dir.iterdir()):
        return
    log_file = (run_dir / "mtbench.log").resolve()
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == log_file:
                handler.close()
                logger.removeHandler(handler)
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / "mtbench.log").unlink(missing_ok=True)
    folder = run_dir
    for _ in range(5):  # seed=<s>, <variant>, <combiner>, runs, <name>
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

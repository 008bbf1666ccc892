"""The ``mtbench`` command line before Hydra reads it: ``--version``, ``-m`` anywhere,
``--cfg`` resolved, ``--dry-run`` (a sweep listed, not run), the overrides checked
(:mod:`mtbench.overrides`); and the one-line error every refusal prints."""

from __future__ import annotations

import os
import sys


def _error(message: str, exc: BaseException | None = None, code: int = 2) -> None:
    """One line on stderr and exit ``code``; with HYDRA_FULL_ERROR=1 the exception's traceback instead."""
    if exc is not None and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"mtbench: error: {message}", file=sys.stderr)
    sys.exit(code)


#: the flags that make a sweep; accepted anywhere on the command line (``mtbench name=x -m seed=0,1``)
MULTIRUN_FLAGS = ("-m", "--multirun")


def _multirun_first(argv: list[str]) -> list[str]:
    """``argv`` with ``-m``/``--multirun`` moved to the front: Hydra's parser takes the overrides
    as one run of positional arguments, so ``name=x -m seed=1`` would be a usage error."""
    flags = [a for a in argv if a in MULTIRUN_FLAGS]
    return flags[:1] + [a for a in argv if a not in MULTIRUN_FLAGS] if flags else argv


def _resolve_shown_config(argv: list[str]) -> list[str]:
    """``--cfg job`` and ``--cfg all`` print the config resolved (``name: shapes40``, not
    ``name: ${task.name}``): ``--resolve`` is added unless given. ``--cfg hydra`` stays as Hydra
    prints it (its keys refer to the job's, which it cannot resolve alone)."""
    if "--resolve" in argv:
        return argv
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--cfg", "-c") and argv[i + 1] in ("job", "all"):
            return [*argv, "--resolve"]
    for arg in argv:
        if arg in ("--cfg=job", "--cfg=all", "-cjob", "-call"):
            return [*argv, "--resolve"]
    return argv


def _rewrite_argv(argv: list[str]) -> tuple[list[str], bool]:
    """Check the command line's overrides (``overrides.check``); the argv Hydra should get and
    whether it is a multirun."""
    from hydra._internal.utils import get_args_parser

    from mtbench.overrides import check

    argv = _multirun_first(argv)
    argv = _resolve_shown_config(argv)

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return argv, False  # Hydra's parser prints its own usage error
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return argv, bool(args.multirun)
    checked = check(list(args.overrides), bool(args.multirun), [args.config_dir] if args.config_dir else None)
    if checked == list(args.overrides):
        return argv, bool(args.multirun)
    flags = [a for a in argv if a not in args.overrides]
    return flags + checked, bool(args.multirun)


def _print_version(argv: list[str]) -> None:
    """``mtbench --version``: mtbench's version (and the Hydra it runs on), exit 0."""
    if "--version" not in argv:
        return
    from hydra import __version__ as hydra_version

    from mtbench import __version__

    print(f"mtbench {__version__}")
    print(f"Hydra {hydra_version}")
    sys.exit(0)


#: ``mtbench -m ... --dry-run``: check and list the sweep's jobs, run none (hydra_plugins.mtbench_sweeper)
DRY_RUN_FLAG = "--dry-run"


def _is_cfg_flag(arg: str) -> bool:
    """Hydra's ``--cfg``/``-c`` flag in any of its spellings (not ``-cd``, the config dir)."""
    return arg in ("--cfg", "-c") or arg.startswith("--cfg=") or arg in ("-cjob", "-chydra", "-call")


def _sweep_listing(argv: list[str]) -> list[str]:
    """``--dry-run`` taken out of ``argv`` (a multirun of the same overrides, whose sweeper
    lists the jobs and runs none: ``MTBENCH_DRY_RUN=1``); ``--cfg`` with ``-m`` refused in one
    line naming ``--dry-run`` (Hydra shows one job's config, never a sweep's)."""
    from hydra_plugins.mtbench_sweeper import DRY_RUN

    if DRY_RUN_FLAG in argv:
        if any(_is_cfg_flag(a) for a in argv):
            _error("--dry-run lists a sweep's jobs; --cfg prints one run's config: use one of them")
        argv = [a for a in argv if a != DRY_RUN_FLAG]
        if not any(a in MULTIRUN_FLAGS for a in argv):
            argv = ["-m", *argv]
        os.environ[DRY_RUN] = "1"
        return argv
    if any(a in MULTIRUN_FLAGS for a in argv) and any(_is_cfg_flag(a) for a in argv):
        _error(
            "--cfg prints one run's config and cannot go with -m; list the sweep's jobs with "
            "mtbench -m ... --dry-run, or drop -m (and the commas) to see one run's config"
        )
    return argv

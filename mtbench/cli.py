"""The ``mtbench`` command: a Hydra application that trains one run per job.

    mtbench task=shapes40 combiner=baseline seed=3 trainer.epochs=2 trainer.device=cpu
    mtbench -m                      # every combiner (the primary config's hydra.sweeper.params)
    mtbench -m seed=0,1,2

Each run writes ``metrics.json`` (status ``running`` while it trains, then ``completed``,
``interrupted``, or ``failed`` with a ``reason``), ``history.csv``, ``per_attribute.csv`` and,
until it completes, ``checkpoint.pt`` into ``results/<name>/runs/<combiner>/<variant>/seed=<seed>/``
(``<variant>``: ``default``, or the settings the command line changed; ``mtbench/variant.py``).
Re-running the same command skips completed runs with the same config, resumes the others
from their checkpoint, and refuses to mix runs of different configs unless ``force=true``.

In a sweep, a job with a bad input is refused in one line and the sweep goes on; the command
exits 2 if any job was refused, 1 if any run failed or was interrupted (``report/sweep.py``).

The command line before Hydra reads it: ``cli_argv.py``; a job's config prepared and checked:
``cli_config.py``; the folders the runs write to checked: ``cli_folders.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtbench.cli_argv import (  # noqa: F401 - _is_cfg_flag, MULTIRUN_FLAGS, DRY_RUN_FLAG re-exported
    DRY_RUN_FLAG,
    MULTIRUN_FLAGS,
    _error,
    _is_cfg_flag,
    _print_version,
    _rewrite_argv,
    _sweep_listing,
)
from mtbench.cli_config import GPU_PRESETS, _apply_per_combiner, _drop_inapplicable, check_job, validate  # noqa: F401 - GPU_PRESETS re-exported
from mtbench.cli_folders import (
    _check_results_dir,
    _check_run_folder,
    _check_space,
    _check_sweep_folder,
    _remove_leftovers,
)
from mtbench.errors import MtbenchError
from mtbench.report import sweep
from mtbench.report.runs import METRICS, RETIRED_KEYS, RunDir, atomic_write_text, config_diff, write_csv, write_json  # noqa: F401 - re-exported
from mtbench.variant import identity, register_resolver, variant_name

register_resolver()  # ${mtbench_variant:...} in hydra.run.dir / hydra.sweep.subdir


def _combiners(which: str = "all") -> str:
    from mtbench.combiners import resolve_combiners  # torch is imported only when a config reads the list

    return resolve_combiners(which)


register_resolver("mtbench_combiners", _combiners)  # ${mtbench_combiners:paper}, ${mtbench_combiners:all}: the sweeps

log = logging.getLogger("mtbench")

#: runs of this process that failed (the basic launcher runs jobs in-process); main() exits 1 if any
FAILED: list[str] = []


def _base_record(cfg: DictConfig, ident: dict[str, str] | None = None) -> dict[str, Any]:
    ident = dict(ident or {})
    return {
        "task": cfg.task.name,
        "combiner": cfg.combiner.name,
        "variant": variant_name(ident),
        "overrides": ident,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "epochs": int(cfg.trainer.epochs),
        "name": cfg.name,
    }


def run(cfg: DictConfig, run_dir: Path, ident: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one configured run in ``run_dir`` (or skip / resume it); return metrics.json's content.
    ``ident``: the run's identity overrides (``variant.identity``), recorded in metrics.json.

    The whole run holds the run folder's lock (``mtbench.report.lock``: a run another live
    process holds is skipped, status ``skipped``, and nothing is written into its folder) and
    handles SIGTERM/SIGINT (``mtbench.train.StopFlag``): a signal at any point leaves the run
    ``interrupted`` and resumable, and raises ``Interrupted`` or ``StopNow``.
    """
    from mtbench.report.lock import Locked
    from mtbench.train import Interrupted, StopFlag

    with StopFlag() as stop:
        try:
            with RunDir(run_dir).lock():
                record = _run_owned(cfg, run_dir, stop, ident)
        except Locked as e:
            log.warning(f"[{cfg.name}] {cfg.combiner.name} {variant_name(ident or {})} seed={cfg.seed}: {e}, skipped")
            record = {**_base_record(cfg, ident), "status": "skipped", "reason": str(e)}
    if stop.signum is not None:  # came while the final files were written: the sweep stops here
        raise Interrupted(stop.signum, f"after this run ended ({record['status']})")
    return record


def _run_owned(cfg: DictConfig, run_dir: Path, stop: Any, ident: dict[str, str] | None = None) -> dict[str, Any]:
    """``run``'s work, with the run folder's lock held and the signal handler ``stop`` installed."""
    from mtbench.train import Interrupted, StopNow, TrainingFailed, train  # heavy imports after the checks

    folder = RunDir(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    if folder.begin(resolved, force=bool(cfg.get("force", False))):
        log.info(
            f"[{cfg.name}] {cfg.combiner.name} {variant_name(ident or {})} seed={cfg.seed}: already completed with this config, skipped ({run_dir})"
        )
        assert folder.previous is not None
        return {**folder.previous, "skipped_earlier": True}  # not written: the run's file stays as it was
    record = folder.start(_base_record(cfg, ident), resolved)
    trackers = _trackers(cfg, run_dir, record, resolved)
    try:
        result = train(cfg, run_dir=run_dir, on_epoch=trackers.on_epoch(folder.write_history), stop=stop)
    except (MtbenchError, OSError):
        folder.abandon()  # bad input: leave no run behind
        trackers.finish({"status": "failed"})
        raise
    except (Interrupted, StopNow) as e:
        trackers.finish(folder.interrupted(record, str(e)))
        raise
    except (TrainingFailed, Exception) as e:  # noqa: B014 - the run fails, the sweep goes on
        reason = str(e) if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}"
        failed = folder.failed(record, reason, traceback.format_exc())
        trackers.finish(failed)
        return failed
    done = folder.complete(record, result)
    trackers.finish(done)
    return done


def _trackers(cfg: DictConfig, run_dir: Path, record: dict[str, Any], resolved: dict[str, Any]) -> Any:
    """The run's ``logger=`` backends (``mtbench.report.loggers``), started with the resolved config."""
    from mtbench.report.loggers import RunLoggers

    trackers = RunLoggers(cfg.get("logger"), run_dir, Path(str(cfg.results_dir)))
    if trackers:
        tags = {k: str(record[k]) for k in ("task", "combiner", "variant", "seed", "model", "name")}
        trackers.start(resolved, tags)
    return trackers


def _objective(record: dict[str, Any] | None) -> float:
    """What a sweeper that optimises (Optuna) gets: the run's validation select metric."""
    if not record or record.get("status") != "completed":
        return float("nan")
    try:
        return float(record["val"][record["select_metric"]])
    except (KeyError, TypeError, ValueError):
        return float("nan")


@hydra.main(version_base="1.3", config_path="pkg://mtbench.configs", config_name="config")
def _app(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    rank = _joined_rank(cfg)
    if rank:  # torchrun / SLURM: a rank other than 0 trains alongside rank 0 and writes nothing
        return _follow(cfg, run_dir, overrides)
    try:
        return _lead(cfg, run_dir, multirun, overrides)
    finally:
        if rank == 0:
            from mtbench.train.distributed import release

            release(cfg)  # the other ranks learn that there is nothing to train (a skipped run)


def _joined_rank(cfg: DictConfig) -> int | None:
    """This process's rank in a world that torchrun or SLURM started (``trainer.strategy=ddp``), else None."""
    from mtbench.train.distributed import external_rank, is_ddp

    return external_rank() if is_ddp(cfg.trainer) else None


def _follow(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float:
    """A rank other than 0 of a torchrun / SLURM world: the job's checks, then the training
    steps alongside rank 0 (which owns the run folder and writes every file)."""
    from mtbench.train import Interrupted, StopNow, TrainingFailed, train
    from mtbench.train.distributed import NothingToTrain

    for handler in list(logging.getLogger().handlers):  # the run's log file is rank 0's
        if isinstance(handler, logging.FileHandler):
            logging.getLogger().removeHandler(handler)
            handler.close()
    try:
        _drop_inapplicable(cfg, overrides)
        _apply_per_combiner(cfg, overrides)
        validate(cfg)
        train(cfg, run_dir=run_dir)
    except NothingToTrain:
        return float("nan")
    except MtbenchError as e:
        _error(str(e), e)
    except (Interrupted, StopNow) as e:
        sys.exit(128 + e.signum)
    except TrainingFailed as e:
        _error(str(e), e, code=1)
    return float("nan")


def _lead(cfg: DictConfig, run_dir: Path, multirun: bool, overrides: list[str]) -> float:
    """The job of one run in this process (rank 0 of a DDP run: the one that writes its files)."""
    from mtbench.train import AGAIN, Interrupted, StopNow

    try:
        _drop_inapplicable(cfg, overrides)
        _apply_per_combiner(cfg, overrides)
        ident = identity(overrides, str(cfg.combiner.name))
        validate(cfg)
        record = run(cfg, run_dir, ident)
    except MtbenchError as e:
        _remove_leftovers(run_dir)
        if not multirun:
            _error(str(e), e)
        print(f"mtbench: error: {run_dir}: {e}", file=sys.stderr)  # this job only: the sweep goes on
        sweep.record(run_dir, "refused", str(e))
        return float("nan")
    except (Interrupted, StopNow) as e:
        sweep.record(run_dir, "interrupted", str(e))
        print(AGAIN if getattr(e, "again", False) else f"mtbench: {run_dir}: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except OSError as e:
        hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        _error(
            f"cannot write the results in {run_dir}: {e.strerror or e}; {hint} (or set results_dir=...) and re-run: the run resumes from its last checkpoint",
            e,
        )
    sweep.record(run_dir, str(record.get("status")), record.get("reason"))
    if record["status"] == "skipped" and not multirun:
        _error(_held_message([f"{record['reason']}"]), code=sweep.HELD)
    if record["status"] == "failed":
        FAILED.append(str(run_dir))
        log.error(f"mtbench: run {run_dir} failed: {record['reason']} (details in {run_dir / 'error.log'})")
    elif record.get("wall_s") is not None and record["status"] == "completed":
        shown = "  ".join(f"test {header} {record['test'][key]:.2f}" for key, header, _ in record["metric_columns"])
        label = (
            cfg.combiner.name
            if record.get("variant", "default") == "default"
            else f"{cfg.combiner.name} {record['variant']}"
        )
        again = "  (skipped, completed earlier)" if record.get("skipped_earlier") else ""
        log.info(
            f"[{cfg.name}] {label} seed={cfg.seed}: {shown}  step {1000 * record['train_step_s']:.1f} ms  -> {run_dir}{again}"
        )
    return _objective(record)


class FolderCheck(Callback):
    """Hydra callback: before Hydra creates any run folder, the folders the runs write to are
    checked (one line, exit 2, instead of a traceback from Hydra): permissions and free space;
    and a single run's config is checked (``check_job``), so that a refused run leaves no folder
    behind."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_run_folder(Path(str(config.hydra.run.dir)))
        _check_space(Path(str(config.hydra.run.dir)))
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the refusal's traceback, not one line
        problem = check_job(config, [str(o) for o in config.hydra.overrides.task], raise_error=full_error)
        if problem:
            _error(problem)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_sweep_folder(Path(str(config.hydra.sweep.dir)), _swept_combiners(config))
        _check_space(Path(str(config.hydra.sweep.dir)))


def _swept_combiners(config: DictConfig) -> list[str] | None:
    """The combiner names a sweep's ``combiner=a,b`` lists (command line first, then the
    sweeper's params); None when that is not a plain list of names."""
    value = None
    for override in config.hydra.overrides.task:
        key, _, rest = str(override).partition("=")
        if key.lstrip("+~") == "combiner":
            value = rest
    params = config.hydra.sweeper.get("params") or {}
    if value is None and "combiner" in params:
        value = str(params["combiner"])
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")]
    return names if all(n and all(c.isalnum() or c in "_-." for c in n) for n in names) else None


def _register_sweeper() -> None:
    """Register mtbench's sweeper (``hydra/sweeper=interleaved``) with Hydra by hand: Hydra finds
    plugins by listing its ``hydra_plugins`` package, which an editable install cannot list."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mtbench_sweeper import InterleavedSweeper

    Plugins.instance().register(InterleavedSweeper)


def _held_message(lines: list[str]) -> str:
    """The one line for runs that another live process holds (exit status ``sweep.HELD``)."""
    return (
        f"{len(lines)} run(s) are owned by another mtbench process that is running them ({'; '.join(lines)}); "
        "wait for it to end (or stop it) and re-run to check them"
    )


def main() -> None:
    """Console entry point: check the command line, run the Hydra app; exit 1 if any run of the
    command failed or was interrupted, 2 if any was refused (a bad input). Ctrl-C before a run
    holds its folder (while the command starts up) is one line and exit 130; a disk that fails
    outside a run (full, read-only) is one line and exit 2."""
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per message
    # torch's OpenMP worker threads sleep when idle instead of spinning: on a busy machine the
    # spinning burns the cores the other threads wait for (scripts/bench_threads.py; an
    # OMP_WAIT_POLICY of the user's wins). Read when torch loads, which is after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        _main()
    except KeyboardInterrupt:
        print(
            "mtbench: interrupted while starting up (no run was in progress); re-run the command to go on",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as e:
        hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        where = f" ({e.filename})" if e.filename else ""
        _error(f"cannot write{where}: {e.strerror or e}; {hint} and re-run", e)


def _main() -> None:
    argv = sys.argv[1:]
    # the working folder is importable, as with ``python -m``: a combiner (model, optimizer) of
    # the user's, named by ``_target_: mine.Mine``, lives next to where mtbench runs
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    _print_version(argv)
    _check_results_dir(argv)
    argv = _sweep_listing(argv)
    try:
        argv, multirun = _rewrite_argv(argv)
    except MtbenchError as e:
        _error(str(e), e)
    sys.argv[1:] = argv
    manifest = None
    if multirun:
        _register_sweeper()
        root = next((a.split("=", 1)[1] for a in argv if a.startswith("results_dir=")), "results")
        manifest = sweep.start(root.split(",")[0])
    try:
        _app()
    except BaseException:
        if manifest is not None:  # interrupted or refused: the manifest has no further use
            sweep.discard(manifest)
        raise
    if manifest is not None:
        code, lines = sweep.finish(manifest)
        if code == sweep.HELD:
            _error(_held_message(lines), code=sweep.HELD)
        if code:
            print(f"mtbench: {len(lines)} run(s) did not complete: " + "; ".join(lines), file=sys.stderr)
            sys.exit(code)
    elif FAILED:
        print(f"mtbench: {len(FAILED)} run(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

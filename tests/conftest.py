"""Shared helpers: run the real `mtbench` / `mtbench-table` commands in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

#: a config small enough that one run takes a few seconds on 2 CPU cores
TINY = [
    "task.n_train=192",
    "task.n_val=96",
    "task.n_test=96",
    "model.width=8",
    "model.rep_dim=32",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.device=cpu",
    "trainer.num_threads=1",
]


def command(name: str) -> list[str]:
    """The installed console script (next to this interpreter), else ``python -m``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {
        "mtbench": "mtbench",
        "mtbench-table": "mtbench.report.table_main",
        "mtbench-fake": "mtbench.data.fake",
        "mtbench-eval": "mtbench.train.evaluate",
    }[name]
    return [sys.executable, "-m", module]


def run_cli(
    name: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        command(name) + args,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_dir(results: Path, combiner: str, seed: int = 0, variant: str | None = None) -> Path:
    """The folder of one run: ``<results>/runs/<combiner>/<variant>/seed=<seed>`` (``results`` is
    the sweep's folder, e.g. ``tmp_path / "results" / "shapes40"``). Without ``variant``: the
    combiner's only variant holding that seed (an error if there are several)."""
    base = Path(results) / "runs" / combiner
    if variant is not None:
        return base / variant / f"seed={seed}"
    found = sorted(p for p in base.glob(f"*/seed={seed}") if p.is_dir())
    if len(found) > 1:
        raise AssertionError(f"several variants of {combiner} seed={seed}: {[p.parent.name for p in found]}")
    return found[0] if found else base / "default" / f"seed={seed}"


def variant_of(overrides: list[str], combiner: str = "baseline") -> str:
    """The variant folder name a command line's overrides give ``combiner``'s runs."""
    from mtbench.variant import identity, variant_name

    return variant_name(identity(overrides, combiner))


def run_path(overrides: list[str], combiner: str = "baseline", seed: int = 0, name: str = "shapes40") -> str:
    """``results/<name>/runs/<combiner>/<variant>/seed=<seed>`` of a command line, relative to its folder."""
    return f"results/{name}/runs/{combiner}/{variant_of(overrides, combiner)}/seed={seed}"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run the tests marked slow")


#: the long end-to-end, resume, kill and sweep tests (``file::test``, every parametrization),
#: marked ``slow`` here so that each stays where its subject is; a test file may also mark its
#: own with ``@pytest.mark.slow``. The fast suite keeps one end-to-end CLI run per task
#: (shapes40: test_cli's single run and test_docs' example; celeba: test_celeba's sweep;
#: cifar100_transfer: test_cifar100's test_one_run_end_to_end; nyuv2 and cityscapes: their test_cli_run*)
#: and the one-line-error runs.
SLOW = {
    "test_api.py::test_the_resnet_example_trains",
    "test_nn.py::test_the_resnet_example_trains",
    "test_nn.py::test_distributed_data_parallel_replica",
    "test_bench.py::test_bench_step_tiny_problem",
    "test_bench.py::test_bench_step_says_when_torchjd_is_absent",
    "test_bench.py::test_bench_step_rows_outside_the_trainer_with_mlp_heads",
    "test_bench.py::test_bench_solvers_times_every_solver",
    "test_celeba.py::test_partial_cache_is_detected_and_rebuilt",
    "test_celeba.py::test_killed_build_is_never_used",
    "test_cifar100.py::test_sweep_runs_the_papers_combiners",
    "test_cifar100.py::test_sweep_table_has_the_transfer_columns",
    "test_cifar100.py::test_a_run_alone_has_the_numbers_it_has_late_in_a_sweep",
    "test_cifar100.py::test_killed_run_resumes_to_the_same_numbers",
    "test_cli.py::test_sweep_writes_every_run",
    "test_cli.py::test_sweep_seeds_differ_and_table_is_printed",
    "test_cli.py::test_table_files",
    "test_cli.py::test_mtbench_table_rebuilds",
    "test_cli.py::test_multirun_flag_anywhere_on_the_command_line",
    "test_compare_metrics.py::test_f1_floor_command_on_the_fake_attribute_file",
    "test_compare_metrics.py::test_columns_reach_metrics_json_and_the_table",
    "test_debug.py::test_fast",
    "test_debug.py::test_max_steps_per_epoch_and_eval_examples",
    "test_debug.py::test_overfit_drives_the_training_loss_down",
    "test_debug.py::test_profile_writes_a_trace",
    "test_docs.py::test_example_combiner_from_the_command_line_alone",
    "test_fault_inject.py::test_fault_inject_quick",
    "test_files.py::test_metrics_json_that_is_not_an_object_is_unreadable",
    "test_files.py::test_a_file_where_a_folder_belongs",
    "test_files.py::test_read_only_run_folder_through_the_cli",
    "test_files.py::test_flipped_checkpoint_through_the_cli",
    "test_files.py::test_stale_temporary_files_and_a_completed_runs_checkpoint_are_removed",
    "test_launchers.py::test_submitit_local_sweep_end_to_end",
    "test_loggers.py::test_tensorboard_event_files",
    "test_loggers.py::test_mlflow_store",
    "test_loggers.py::test_wandb_offline_run",
    "test_loggers.py::test_default_logger_writes_todays_files_only",
    "test_optuna.py::test_two_optuna_trials",
    "test_ownership.py::test_second_process_skips_a_live_run_and_writes_nothing_into_it",
    "test_ownership.py::test_duplicate_concurrent_sweeps_each_run_once_and_consistent",
    "test_ownership.py::test_stale_lock_of_a_killed_process_is_taken_over",
    "test_ownership.py::test_sigterm_at_either_end_of_the_run",
    "test_ownership.py::test_second_ctrl_c_stops_at_once_with_one_line",
    "test_packaging.py::test_wheel_installs_and_finds_its_configs",
    "test_packaging.py::test_your_own_combiner_from_your_own_folder",
    "test_presets.py::test_kurin_celeba_end_to_end",
    "test_presets.py::test_famo_celeba_end_to_end",
    "test_presets.py::test_per_combiner_from_the_command_line",
    "test_robustness.py::test_same_seed_same_numbers",
    "test_robustness.py::test_killed_run_resumes_to_the_same_numbers",
    "test_robustness.py::test_sigterm_checkpoints_marks_interrupted_and_resumes",
    "test_robustness.py::test_every_combiner_resumes_mid_epoch_to_the_same_numbers",
    "test_robustness.py::test_a_run_alone_has_the_numbers_it_has_late_in_a_sweep",
    "test_robustness.py::test_retain_freed_memory_is_set_at_every_run_start",
    "test_robustness.py::test_rerun_skips_completed_and_refuses_other_config",
    "test_robustness.py::test_nan_fails_the_run_names_step_and_task_and_the_sweep_goes_on",
    "test_robustness.py::test_disk_full_while_writing_results_loses_nothing",
    "test_robustness.py::test_table_tolerates_running_and_corrupt_runs",
    "test_saved_model.py::test_best_model_is_kept_and_the_checkpoint_removed",
    "test_saved_model.py::test_eval_gives_the_numbers_of_metrics_json",
    "test_saved_model.py::test_last_and_none",
    "test_sweep_order.py::test_a_sweep_runs_every_combiner_of_a_seed_in_turn",
    "test_sweep_order.py::test_hydras_basic_sweeper_keeps_its_own_order",
    "test_registry.py::test_every_new_combiner_runs_from_the_command_line",
    "test_lossweighted.py::test_each_runs_end_to_end_from_the_cli",
    "test_targets.py::test_the_command_line_alone_names_a_trunk_and_a_scheduler_with_options",
    "test_variants.py::test_sweep_over_a_combiner_option_and_a_trainer_option",
    "test_variants.py::test_tuned_table_selects_on_validation_not_test",
    "test_variants.py::test_tuned_preset_writes_the_tuned_table",
    "test_variants.py::test_a_bad_value_for_one_job_refuses_the_sweep_before_any_job_runs",
    "test_variants.py::test_failed_run_under_joblib_gives_a_nonzero_exit",
    "test_variants.py::test_a_sweep_over_name_writes_each_folders_table",
    "test_variants.py::test_mtbench_table_on_a_folder_where_every_run_failed",
}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on the marker
def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run with ``--runslow`` or when ``-m`` names them; plain ``pytest`` skips them."""
    for item in items:
        if f"{item.path.name}::{item.originalname}" in SLOW:
            item.add_marker(pytest.mark.slow)
    if config.getoption("--runslow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: pytest --runslow (or -m slow) runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- one completed run, shared by the tests that damage a copy of it (test_files, test_safety) --


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("mtbench: error:")]
    return line


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """A working folder holding one completed TINY run with its model.pt (copied by the tests that change it)."""
    cwd = tmp_path_factory.mktemp("completed")
    proc = run_cli("mtbench", TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def copy_of(completed: Path, tmp_path: Path) -> tuple[Path, Path]:
    cwd = tmp_path / "work"
    shutil.copytree(completed, cwd)
    return cwd, run_dir(cwd / "results" / "shapes40", "baseline", 0)


# -- short command runs (bad input: exit 2 and one line; --help; ...), forked from one interpreter --

#: the console scripts (pyproject.toml's [project.scripts]) a forked run can start
ENTRY = {
    "mtbench": "mtbench.cli:main",
    "mtbench-table": "mtbench.report.table_main:main",
    "mtbench-fake": "mtbench.data.fake:main",
    "mtbench-eval": "mtbench.train.evaluate:main",
}


@dataclass
class Ran:
    """One finished forked run: what ``subprocess.run`` gives (exit status, stdout, stderr) and its folder."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    cwd: Path


@dataclass
class _Case:
    module: str
    name: str
    args: list[str] | Callable[[Path], list[str]]
    env: dict
    setup: Callable[[Path], None] | None
    prelude: str


#: (test module, key) -> the run, registered by ``cli_case`` when the test modules are imported
CASES: dict[tuple[str, object], _Case] = {}


def cli_case(
    module: str,
    key: object,
    name: str,
    args: list[str] | Callable[[Path], list[str]],
    *,
    env: dict | None = None,
    setup: Callable[[Path], None] | None = None,
    prelude: str = "",
) -> None:
    """Register a short run of command ``name`` (``ENTRY``) for ``cli_runs``: ``args`` (or
    ``args(folder)``), in its own empty folder (``setup(folder)`` fills it first), with ``env``
    added to the environment and the Python statements ``prelude`` run before the command.
    The prelude sees ``sys`` (``"sys.modules['wandb'] = None"``: the package cannot be
    imported). Call it at import time, with the test module's ``__name__``; a test reads the run
    as ``cli_runs[module, key]`` (a ``Ran``)."""
    assert (module, key) not in CASES, f"registered twice: {module} {key!r}"
    assert name in ENTRY, name
    CASES[module, key] = _Case(module, name, args, dict(env or {}), setup, prelude)


RUNNER = r"""
import json, logging, os, signal, sys
import hydra, torch  # noqa: F401 - imported once, before the forks
import hydra.core.plugins, pandas  # noqa: F401
import mtbench.cli, mtbench.combiners, mtbench.train, mtbench.overrides, mtbench.train.options  # noqa: F401
import mtbench.report.callback, mtbench.report.table, mtbench.sweep_order  # noqa: F401
hydra.core.plugins.Plugins.instance()  # Hydra's plugin discovery, once
cases = json.loads(sys.stdin.read())
codes = [None] * len(cases)
running = {}  # pid -> case index; as many forks at once as there are cores
for index, case in enumerate(cases):
    if len(running) >= (os.cpu_count() or 1):
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    pid = os.fork()
    if pid == 0:
        code = 1
        signal.alarm(300)  # a run that hangs ends (killed by SIGALRM) instead of holding the others
        try:
            os.chdir(case["cwd"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, case["out"]), (2, case["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.environ.update(case["env"])
            exec(case["prelude"], {"sys": sys})
            sys.argv = [case["name"], *case["args"]]
            module, function = case["entry"].split(":")
            main = getattr(__import__(module, fromlist=[function]), function)
            try:  # what the console script does: sys.exit(main())
                result = main()
                code = 0 if result is None else result
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
        except BaseException:
            import traceback
            traceback.print_exc()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    running[pid] = index
while running:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""


def run_forked(cases: list[_Case], base: Path) -> list[Ran]:
    """Each case through its command's entry point (``mtbench.cli.main``, Hydra and all), in its
    own process forked from one interpreter that imported torch, Hydra and mtbench once (as many
    at once as there are cores): the exit status and output of the console script, a fraction of
    its start-up time."""
    todo = []
    for i, case in enumerate(cases):
        folder = base / str(i)
        folder.mkdir()
        if case.setup is not None:
            case.setup(folder)
        args = case.args(folder) if callable(case.args) else case.args
        out, err = str(base / f"{i}.out"), str(base / f"{i}.err")
        todo.append(
            {"cwd": str(folder), "out": out, "err": err, "name": case.name, "entry": ENTRY[case.name], "args": args}
            | {"env": case.env, "prelude": case.prelude}
        )
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(todo), capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        Ran(t["args"], code, Path(t["out"]).read_text(), Path(t["err"]).read_text(), Path(t["cwd"]))
        for t, code in zip(todo, codes, strict=True)
    ]


@pytest.fixture(scope="session")
def cli_runs(request, tmp_path_factory) -> dict[tuple[str, object], Ran]:
    """Every ``cli_case`` of the test modules that have a test using this fixture, run at once."""
    modules = {item.module.__name__ for item in request.session.items if "cli_runs" in item.fixturenames}
    keys = [key for key, case in CASES.items() if case.module in modules]
    ran = run_forked([CASES[key] for key in keys], tmp_path_factory.mktemp("cli_runs"))
    return dict(zip(keys, ran, strict=True))

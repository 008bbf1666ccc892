"""mtbench's Hydra sweeper (``hydra/sweeper=interleaved``, the default of ``mtbench -m``): the
basic sweeper with the combiners alternating in the run order (:mod:`mtbench.sweep_order`).

Before the first job starts, every job's config is composed and checked like a single run's
(``mtbench.cli.check_job``): a bad value anywhere in the sweep (``combiner.leak=0,2``) is
refused, one line per job, and nothing runs (exit status 2). With ``mtbench -m ... --dry-run``
(``MTBENCH_DRY_RUN=1``) the jobs are checked and listed, one line of overrides each, and none
runs; nothing is written.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mtbench.sweep_order import combiner_last

__all__ = ["InterleavedSweeper", "DRY_RUN"]

#: set by ``mtbench --dry-run``: list the sweep's jobs, run none
DRY_RUN = "MTBENCH_DRY_RUN"


class InterleavedSweeper(BasicSweeper):
    """Hydra's basic sweeper with ``combiner`` varying fastest: the same runs, each seed (and
    each setting of every other swept key) running all combiners in turn."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None) -> None:
        # BasicSweeper.__init__'s attributes, set here: its ``super(BasicSweeper, self)`` fails
        # when Hydra's plugin scan has loaded basic_sweeper's module a second time
        self.overrides = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.hydra_context = None
        self.config = None
        self.launcher = None
        self.refused_jobs = 0

    @staticmethod
    def split_arguments(overrides: list[Any], max_batch_size: int | None) -> list[list[list[str]]]:
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        jobs = combiner_last(jobs)
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

    def jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides, in the order they run."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        (jobs,) = self.split_arguments(parsed, None)
        return [list(job) for job in jobs]

    def check(self, jobs: list[list[str]]) -> list[str]:
        """One line per job whose config mtbench refuses (``mtbench.cli.check_job``)."""
        from mtbench.cli import check_job

        assert self.hydra_context is not None and self.config is not None
        by_problem: dict[str, list[str]] = {}
        varying = _varying(jobs)
        for job in jobs:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
            problem = check_job(cfg, list(job))
            if problem:
                shown = [o for o in job if o.split("=", 1)[0] in varying] or job
                by_problem.setdefault(problem, []).append(" ".join(shown) or "(no overrides)")
        refused = []
        for problem, names in by_problem.items():  # one line per distinct problem
            if len(names) == len(jobs) and len(jobs) > 1:
                refused.append(f"every job: {problem}")
            elif len(names) > 3:
                refused.append(f"job {names[0]} and {len(names) - 1} more: {problem}")
            else:
                refused += [f"job {name}: {problem}" for name in names]
        self.refused_jobs = sum(len(n) for n in by_problem.values())
        return refused

    def sweep(self, arguments: list[str]) -> Any:
        jobs = self.jobs(arguments)
        refused = self.check(jobs)
        if refused:
            for line in refused:
                print(f"mtbench: error: {line}", file=sys.stderr)
            print(
                f"mtbench: error: {self.refused_jobs} of {len(jobs)} job(s) refused; nothing ran: fix the value(s) and re-run",
                file=sys.stderr,
            )
            sys.exit(2)
        if os.environ.get(DRY_RUN) == "1":
            for job in jobs:
                print(" ".join(job) or "(no overrides)")
            print(f"mtbench: {len(jobs)} job(s); --dry-run: none was run", file=sys.stderr)
            return []
        return super().sweep(arguments)


def _varying(jobs: list[list[str]]) -> set[str]:
    """The keys whose value differs between the jobs (the swept ones)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1}

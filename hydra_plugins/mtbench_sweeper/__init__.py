"""mtbench's Hydra sweeper (``hydra/sweeper=interleaved``, the default of ``mtbench -m``): the
basic sweeper with the combiners alternating in the run order (:mod:`mtbench.sweep_order`)."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from mtbench.sweep_order import combiner_last

__all__ = ["InterleavedSweeper"]


class InterleavedSweeper(BasicSweeper):
    """Hydra's basic sweeper with ``combiner`` varying fastest: the same runs, each seed (and
    each setting of every other swept key) running all combiners in turn."""

    @staticmethod
    def split_arguments(overrides: list[Any], max_batch_size: int | None) -> list[list[list[str]]]:
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        jobs = combiner_last(jobs)
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

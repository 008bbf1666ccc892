"""The sweeper of ``mtbench -m``: Hydra's basic sweeper (the cartesian product of every swept
key), with the runs ordered so that the combiners alternate.

Hydra's basic sweeper varies the last key fastest and the primary config lists ``combiner``
first, so each combiner's seeds would run back to back and a slow spell of the machine would
fall on one combiner's step times. ``InterleavedSweeper`` (``hydra/sweeper=interleaved``, the
default; in ``hydra_plugins.mtbench_sweeper``, the only package Hydra loads sweepers from) moves
``combiner`` to the end of the product, so every setting of the other keys runs all combiners in
turn. The runs, their folders and their numbers are the basic sweeper's; only the order changes.
``hydra/sweeper=basic`` restores Hydra's order; ``hydra/sweeper=optuna`` (the ``[optuna]``
extra) replaces the sweeper.
"""

from __future__ import annotations

__all__ = ["combiner_last"]

#: the swept key that varies fastest
FASTEST = "combiner"


def combiner_last(jobs: list[list[str]]) -> list[list[str]]:
    """The jobs (each a list of ``key=value`` overrides, as the basic sweeper makes them) in
    the order of a product whose ``combiner`` key varies fastest, every other key keeping its
    order; each job's own overrides are left as they were."""
    if not jobs:
        return jobs
    keys = [o.split("=", 1)[0] for o in jobs[0]]
    if FASTEST not in keys:
        return jobs
    at = keys.index(FASTEST)
    order = [i for i in range(len(keys)) if i != at] + [at]
    # the basic sweeper's product is in lexicographic order of each key's value index;
    # sorting by the reordered indices gives the product with combiner last
    position: list[dict[str, int]] = [{} for _ in keys]
    for job in jobs:
        for i, o in enumerate(job):
            position[i].setdefault(o, len(position[i]))
    return sorted(jobs, key=lambda job: [position[i][job[i]] for i in order])

"""Where a run's random numbers come from, and the per-process settings every run sets.

Each consumer of randomness draws from its own generator, seeded from the run's ``seed`` and a
purpose name (:func:`derive_seed`), so no consumer shifts another's numbers and a run's numbers
do not depend on what ran before it in the same process. The purposes:

- ``task build``: whatever a task's builder draws from torch's global generator, on a fork of it
  (so a cache hit or miss changes nothing else); not seeded by ``seed``.
- ``model init``: the model's initialisation, trunk and heads (on a fork of the global generator).
- ``batch order``: the training split's permutation, one per epoch.
- ``augmentation``: training-time augmentation (``Task.augment``, e.g. CelebA's flips).
- ``combiner``: the combiner's draws on the training device (GradDrop's); ``combiner cpu``: its
  host draws (PCGrad's orders) when the device is not the CPU (on a CPU: ``combiner``).
- ``second batch``: the second mini-batch of each step and its augmentation, only for a combiner
  with ``needs_second_batch`` (SDMGrad, MoDo), and only such a run has (and checkpoints) it.
- ``training``: torch's global generators during training (e.g. dropout).

The states of the generators used during training go in every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["derive_seed", "make_generator", "run_generators", "forked_global_rng", "set_num_threads"]


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` from the run's ``seed``: the same on every machine and in
    every process (a hash, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"mtbench/{int(seed)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, purpose)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))


def run_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The generators a training run draws from, by purpose (see the module docstring)."""
    gens = {
        "batch order": make_generator(seed, "batch order"),
        "augmentation": make_generator(seed, "augmentation"),
        "combiner": make_generator(seed, "combiner", device),
    }
    gens["combiner cpu"] = (
        make_generator(seed, "combiner cpu") if torch.device(device).type != "cpu" else gens["combiner"]
    )
    return gens


@contextlib.contextmanager
def forked_global_rng(seed: int, purpose: str) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded for ``purpose``; its previous
    state is restored afterwards, so the block neither sees nor shifts anyone else's draws."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, purpose))
        yield


#: torch's intra-op thread count when this process first set it (what ``num_threads: null`` restores)
_default_threads: int | None = None


def set_num_threads(value: Any) -> int:
    """Set torch's intra-op threads for this run: ``value``, or (null / 0) the process's
    default, remembered at the first call; returns the count set. Called at the start of every
    run, so a run of a sweep never inherits the previous run's setting."""
    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    threads = int(value) if value else _default_threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

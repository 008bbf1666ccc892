"""The training device (a DDP rank's GPU), mixed precision (``trainer.amp``) and the timing of
training steps (``metrics.json``'s timing fields)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import statistics
import sys
import time
import types
from typing import Any

import torch

from mtbench.errors import MtbenchError
from mtbench.train.state import RunState

__all__ = [
    "AMP_DTYPES",
    "StepTimer",
    "amp_dtype",
    "autocast",
    "channels_last",
    "rank_device",
    "resolve_device",
    "retain_freed_memory",
    "sample_load",
    "timing_fields",
]


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` of ``trainer.device`` (auto: a CUDA GPU when one is visible, else
    the CPU); a one-line error for a name that is not a device or a GPU that is not there."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtbenchError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"trainer.device={name} but no CUDA GPU is visible; use trainer.device=cpu or auto")
    return device


def rank_device(device: torch.device, world: Any) -> torch.device:
    """A DDP rank's GPU: ``cuda:<local rank>`` (one process per device); else ``device``.
    ``world``: the run's ``distributed.World``, or None (one process)."""
    if world is not None and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


#: ``trainer.amp`` values and their autocast dtypes (no float16: its loss scaling would change
#: what clipping and the gradient penalty compute)
AMP_DTYPES = {"false": None, "none": None, "true": torch.bfloat16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def amp_dtype(tcfg: Any) -> torch.dtype | None:
    """The autocast dtype of ``trainer.amp`` (false | bf16); a one-line error otherwise."""
    value = str(tcfg.get("amp", False)).lower()
    if value not in AMP_DTYPES:
        raise MtbenchError(f"trainer.amp={tcfg.get('amp')!r} is not allowed; choose false or bf16")
    return AMP_DTYPES[value]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast for the forward pass (model and losses) when ``trainer.amp`` asks for it."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


#: glibc's ``mallopt`` parameters, and the thresholds ``trainer.retain_freed_memory`` sets:
#: allocations up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to 1 GiB
#: of freed memory at its top stays there for the next ones
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_RETAIN = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30}
#: glibc's initial thresholds (128 KiB each), what ``retain_freed_memory(False)`` restores
_GLIBC_DEFAULTS = {_M_MMAP_THRESHOLD: 128 << 10, _M_TRIM_THRESHOLD: 128 << 10}
_retaining = False


@functools.cache
def _glibc() -> Any:
    """glibc's ``mallopt`` and ``malloc_trim`` (a namespace), or None (another C library, or not
    Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return types.SimpleNamespace(mallopt=mallopt, malloc_trim=trim)


def retain_freed_memory(enabled: bool) -> bool:
    """``trainer.retain_freed_memory``: on Linux with glibc, let malloc keep freed memory for
    the next allocations instead of returning it to the system (mallopt's mmap and trim
    thresholds). torch's CPU tensors come from malloc; with glibc's defaults a large tensor
    freed at the end of a step is handed back, and its successor of the next step faults in
    fresh, zeroed pages: at 400 tasks the per-task tensors of a step are tens of MB, and
    GradNorm's step is measurably slower (docs/performance.md, "Freed memory").
    The process keeps its peak heap instead. ``False`` after ``True`` in one process restores
    glibc's initial thresholds (not their adaptive growth) and returns the freed memory kept
    until then (``malloc_trim``: else the next allocations would still come from it). Speed and memory only: no number a
    run computes depends on it. Returns whether the thresholds were set (False without glibc,
    or when ``enabled`` is False and nothing was changed)."""
    global _retaining
    libc = _glibc()
    if libc is None or (not enabled and not _retaining):
        return False
    values = _RETAIN if enabled else _GLIBC_DEFAULTS
    ok = all(libc.mallopt(param, value) == 1 for param, value in values.items())
    if ok and not enabled:  # and hand back what was kept under the old thresholds
        libc.malloc_trim(0)
    _retaining = enabled and ok
    return ok


def channels_last(x: Any) -> Any:
    """``trainer.channels_last``: a model (its 4-d kernels) or a 4-d batch in channels-last
    memory format; anything else unchanged."""
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class StepTimer:
    """Training-step durations without a host synchronisation per step: on a GPU, CUDA events
    recorded around each step (in the stream, so the time includes any wait for the host)
    are read at the logging interval (``flush``); on a CPU, the wall clock and, besides it, the
    process's CPU time (``time.process_time``: the time this process's threads computed, torch's
    intra-op threads included). Other processes on a busy machine stretch the wall time of a
    step (the process waits for a core) but not its CPU time, so on a CPU the speed ratios come
    from the CPU time (``cpu_times``; ``metrics.json``'s ``train_step_cpu_s``)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self._start: Any = None
        self._cpu_start = 0.0
        #: CPU time of each step not taken yet (``take_cpu``); CPU device only
        self.cpu_times: list[float] = []

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._cpu_start = time.process_time()
            self._start = time.perf_counter()

    def stop(self) -> list[float]:
        """The step's (wall) duration in seconds, or nothing yet on a GPU (see ``flush``)."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self._start, end))
            return []
        wall = time.perf_counter() - self._start
        self.cpu_times.append(time.process_time() - self._cpu_start)
        return [wall]

    def take_cpu(self) -> list[float]:
        """The CPU times of the steps since the last call (none on a GPU)."""
        out, self.cpu_times = self.cpu_times, []
        return out

    def flush(self) -> list[float]:
        """Durations of the steps not reported yet (one synchronisation, on the last event)."""
        if not self.pending:
            return []
        self.pending[-1][1].synchronize()
        out = [a.elapsed_time(b) / 1000.0 for a, b in self.pending]
        self.pending.clear()
        return out


def sample_load(state: RunState) -> None:
    """Add the machine's 1-minute load average to ``state.load_1m`` (where the OS has one)."""
    if hasattr(os, "getloadavg"):
        try:
            state.load_1m.append(round(os.getloadavg()[0], 2))
        except OSError:
            pass


def timing_fields(state: RunState, device: torch.device) -> dict[str, Any]:
    """``metrics.json``'s timing fields besides ``train_step_s`` (wall time, or device time on a
    GPU): ``train_step_cpu_s`` (the median process CPU time of a step, on a CPU; null on a GPU
    or when a resumed run's older checkpoint has no CPU times), ``speed_clock`` (the time the
    tables' speed comes from: ``cpu``, ``wall`` or ``device``), and ``load`` (the machine's
    1-minute load averages sampled during the run, its cores, and whether the load exceeded them)."""
    cpu = state.step_cpu_times if device.type != "cuda" and len(state.step_cpu_times) == len(state.step_times) else []
    cores = os.cpu_count() or 1
    samples = list(state.load_1m)
    return {
        "train_step_cpu_s": statistics.median(cpu) if cpu else None,
        "speed_clock": "device" if device.type == "cuda" else ("cpu" if cpu else "wall"),
        "load": {
            "cores": cores,
            "load_1m": samples,
            "max_1m": max(samples) if samples else None,
            "over_cores": bool(samples) and max(samples) > cores,
        },
    }

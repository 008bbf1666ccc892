"""Training on several processes with ``torch.distributed`` (``trainer.strategy=ddp``).

One process per device, NCCL on GPUs, gloo on CPUs. The world is started here
(``trainer.devices=N`` on one node: the Hydra job is rank 0 and spawns ranks 1..N-1 on a free
localhost port) or joined (``torchrun`` or SLURM set the rank and world size).

A DDP run computes the single-process run's numbers: every rank draws the same batch order and
prepares the same global batch (augmentation included), then keeps its slice (:func:`rank_slice`:
rank r the r-th of N equal parts); per-task losses are rescaled so their mean over ranks is the
single-process loss (:meth:`World.loss_scale`: an uneven last batch, dense valid-pixel counts);
:class:`SyncBatchNorm` uses the global batch's statistics; the combiner leaves the
single-process gradient on every rank (``Step.group``); evaluation gathers each rank's
contiguous part in order (dense tasks: evaluated whole on every rank).

Only rank 0 writes files. A rank that dies or raises makes the others fail at their next
collective (at once for a dead peer, after ``trainer.collective_timeout_s`` for a stuck one);
rank 0 then fails the run with that rank's error.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtbench.errors import MtbenchError
from mtbench.train.batches import rank_slice

log = logging.getLogger("mtbench")

__all__ = [
    "SyncBatchNorm",
    "World",
    "check_batch_size",
    "check_combiner",
    "check_task",
    "convert_sync_batchnorm",
    "external_rank",
    "is_ddp",
    "rank_slice",
    "start",
]


def is_ddp(tcfg: Any) -> bool:
    return str(tcfg.get("strategy", "single") or "single") == "ddp"


def _external() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) named by the environment: torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK) or SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); None when neither."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return None


def external_rank() -> int | None:
    """This process's rank in a world the environment names (torchrun, SLURM), else None."""
    found = _external()
    return found[0] if found is not None else None


def world_size(tcfg: Any) -> int:
    """The number of processes a ``trainer.strategy=ddp`` run has: the environment's world
    (torchrun, SLURM) or ``trainer.devices``."""
    found = _external()
    return found[1] if found is not None else int(tcfg.get("devices", 1) or 1)


def check_batch_size(tcfg: Any) -> None:
    """``trainer.batch_size`` is the global batch: it must split evenly over the processes."""
    if not is_ddp(tcfg) or tcfg.get("batch_size") is None:
        return
    n, bs = world_size(tcfg), int(tcfg.get("batch_size"))
    if bs % n:
        raise MtbenchError(
            f"trainer.batch_size={bs} does not split evenly over {n} processes (trainer.strategy=ddp: it is the "
            f"global batch); use a multiple of {n}, e.g. trainer.batch_size={max(n, bs - bs % n)}"
        )


def check_combiner(combiner: Any) -> None:
    """A combiner that cannot give the single-process update under DDP: a one-line error
    (:func:`mtbench.combiners.distributed.check_ddp`)."""
    from mtbench.combiners.distributed import check_ddp

    check_ddp(combiner)


def check_task(task: Any) -> None:
    """A task that adds examples from elsewhere to a training batch (``extend_batch``: the
    transfer task's source images) cannot be split by rank: a one-line error."""
    from mtbench.data.base import Task

    if type(task).extend_batch is not Task.extend_batch:
        raise MtbenchError(
            f"task={task.name} adds examples to each training batch, which trainer.strategy=ddp cannot split "
            "over the processes; use trainer.strategy=single"
        )


@dataclass
class World:
    """This process's place in the run's process group."""

    rank: int
    size: int
    local_rank: int
    group: Any = None
    #: rank 0 of a world started here: the worker processes and the files their errors go to
    workers: list[Any] = field(default_factory=list)
    error_dir: Path | None = None
    #: where this rank's small collectives run (the training device: gloo CPU, NCCL GPU)
    device_for_collectives: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- the training batch ---------------------------------------------------------------
    def local_batch(self, x: torch.Tensor, labels: Any) -> tuple[torch.Tensor, Any]:
        """This rank's slice of a global batch (images and labels)."""
        part = rank_slice(int(x.shape[0]), self.rank, self.size)
        if isinstance(labels, dict):
            return x[part], {k: v[part] for k, v in labels.items()}
        return x[part], labels[part]

    def loss_scale(self, task: Any, batch: int, labels: Any, device: torch.device) -> torch.Tensor:
        """Per-task factors [T] for this rank's local losses such that the mean over the ranks
        of the rescaled losses is the global batch's loss: ``size * c_r / C``, with ``c_r``
        this rank's count of what the loss averages over (examples; a dense task's valid
        pixels) and ``C`` the global count (1 where nothing is counted anywhere)."""
        counts = _loss_counts(task, labels, device)
        if counts is None:  # means over the examples: the counts are the slices' sizes
            mine = rank_slice(batch, self.rank, self.size)
            c = torch.full((task.num_tasks,), float(mine.stop - mine.start), device=device)
            total = torch.full_like(c, float(batch))
        else:
            c = counts.to(torch.float64)
            total = c.clone()
            dist.all_reduce(total, group=self.group)
            c, total = c.float(), total.float()
        return torch.where(total > 0, self.size * c / total.clamp_min(1), torch.ones_like(c))

    def mean_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The global batch's per-task losses: the mean over the ranks of their rescaled local
        ones (one all-reduce on the device, no host synchronisation)."""
        buf = losses.detach().double().clone()
        dist.all_reduce(buf, group=self.group)
        return (buf / self.size).to(losses.dtype)

    def agree_signal(self, signum: int | None) -> int | None:
        """The stop signal any rank received (so all stop at the same point), or None."""
        buf = torch.tensor([float(signum or 0)], dtype=torch.float64, device=self.device_for_collectives)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self.group)
        return int(buf.item()) or None

    # -- evaluation ------------------------------------------------------------------------
    def gather(self, part: Any) -> list[Any]:
        """Every rank's ``part`` (a picklable object), in rank order, on every rank."""
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, part, group=self.group)
        return out

    # -- the end ---------------------------------------------------------------------------
    def failure(self) -> str | None:
        """Rank 0 of a world started here: the first worker's error (its message), or how it
        ended (killed by a signal), once the workers have ended; None if none failed."""
        for rank, proc in enumerate(self.workers, start=1):
            proc.join(timeout=10)
            text = ""
            if self.error_dir is not None:
                path = self.error_dir / f"rank{rank}.txt"
                if path.exists():
                    text = path.read_text(encoding="utf-8").strip()
            if text:
                return f"rank {rank} failed: {text}"
            code = proc.exitcode
            if code is not None and code < 0:
                return f"rank {rank} was killed by {signal.Signals(-code).name}"
            if code:
                return f"rank {rank} exited with status {code}"
            if code is None:
                return f"rank {rank} stopped answering"
        return None

    def close(self) -> None:
        """Leave the process group; rank 0 of a world started here waits for its workers
        (and stops any still running after a few seconds)."""
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        for proc in self.workers:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self.error_dir is not None:
            import shutil

            shutil.rmtree(self.error_dir, ignore_errors=True)


def _loss_counts(task: Any, labels: Any, device: torch.device) -> torch.Tensor | None:
    """Per-task counts of what a dense task's losses average over (valid pixels), else None."""
    if not getattr(task, "dense", False):
        return None
    from mtbench.data.dense import valid_counts

    return torch.stack([valid_counts(t, labels[t]) for t in task.task_names]).to(device)


class NothingToTrain(Exception):
    """A rank of a torchrun / SLURM world whose rank 0 trains nothing (the run is completed,
    held by another process, or refused)."""


#: whether this process started or joined a world (rank 0 of torchrun / SLURM: else it
#: releases the other ranks, :func:`release`)
_STARTED = False


def release(cfg: Any) -> None:
    """Rank 0 of a torchrun / SLURM world that trained nothing: join the world and tell the
    other ranks so (they end without training) instead of leaving them waiting."""
    global _STARTED
    if _STARTED or _external() is None:
        return
    _STARTED = True
    from mtbench.train.device import resolve_device

    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        torch.cuda.set_device(_external()[2])  # type: ignore[index]
    timeout = datetime.timedelta(seconds=timeout_s(cfg.trainer))
    try:
        dist.init_process_group(_backend(device), timeout=timeout)
        flag = torch.zeros(1, device=torch.device("cuda") if device.type == "cuda" else torch.device("cpu"))
        dist.broadcast(flag, 0)
    except Exception as e:  # noqa: BLE001 - the run's own outcome is what this process reports
        log.warning(f"mtbench: could not tell the other processes that there is nothing to train ({e})")
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


#: set in the ranks that rank 0 spawned (their world is rank 0's, not torchrun's)
_SPAWNED = "MTBENCH_DDP_SPAWNED"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slurm_master() -> str:
    """The first host of the SLURM job (the rendezvous of a world of SLURM tasks)."""
    try:
        from submitit import JobEnvironment  # type: ignore[import-not-found]

        return str(JobEnvironment().hostnames[0])
    except Exception:  # noqa: BLE001 - not under submitit: ask SLURM
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
            return out.stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            return nodes.split(",")[0]


#: seconds the processes of a run may take to start and meet (at least): importing torch and
#: building the task on a busy machine can take longer than one collective should
STARTUP_S = 600


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def timeout_s(tcfg: Any) -> float:
    return float(tcfg.get("collective_timeout_s", 300) or 300)


def start(cfg: Any, run_dir: Path | None, device: torch.device, train: Callable[..., Any]) -> World | None:
    """The run's world (None for ``trainer.strategy=single``): joined where the environment
    names one (torchrun, SLURM), else started (rank 0 spawns ``trainer.devices - 1`` workers,
    each running ``train(cfg, run_dir)``: the trainer's entry, passed in by it)."""
    tcfg = cfg.trainer
    if not is_ddp(tcfg):
        return None
    timeout = datetime.timedelta(seconds=timeout_s(tcfg))
    found = _external()
    workers: list[Any] = []
    error_dir = None
    if found is not None:
        rank, size, local = found
        if "MASTER_ADDR" not in os.environ:  # SLURM tasks: the job's first node
            os.environ["MASTER_ADDR"] = _slurm_master()
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)
    else:
        rank, size, local = 0, int(tcfg.get("devices", 1) or 1), 0
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(_free_port())
        error_dir = Path(tempfile.mkdtemp(prefix="mtbench-ddp-"))
        workers = _spawn(cfg, run_dir, size, error_dir, train)
    if device.type == "cuda":
        torch.cuda.set_device(local)
    world = World(rank, size, local, workers=workers, error_dir=error_dir)
    global _STARTED
    _STARTED = True
    try:  # the start-up (processes still importing) may take longer than a collective may
        dist.init_process_group(
            _backend(device), rank=rank, world_size=size, timeout=max(timeout, datetime.timedelta(seconds=STARTUP_S))
        )
        if found is not None and not os.environ.get(
            _SPAWNED
        ):  # torchrun / SLURM: rank 0 trains (1), or not (0: release)
            flag = torch.ones(1, device=torch.device("cuda", local) if device.type == "cuda" else torch.device("cpu"))
            if rank != 0:
                flag.zero_()
            dist.broadcast(flag, 0)
            if not flag.item():
                world.close()
                raise NothingToTrain()
        world.group = dist.new_group(list(range(size)), timeout=timeout)  # the training's collectives
    except NothingToTrain:
        raise
    except Exception as e:
        failed = world.failure() if workers else None
        world.close()
        raise RuntimeError(failed or f"the process group did not start: {e}") from None
    world.device_for_collectives = torch.device("cuda", local) if device.type == "cuda" else torch.device("cpu")
    if world.main:
        log.info(f"mtbench: trainer.strategy=ddp over {size} processes ({_backend(device)})")
    return world


def _spawn(cfg: Any, run_dir: Path | None, size: int, error_dir: Path, train: Callable[..., Any]) -> list[Any]:
    """Start ranks 1..size-1 (fresh interpreters: ``spawn``), each running :func:`_worker`."""
    import multiprocessing

    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    env = {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT")}
    for rank in range(1, size):
        proc = ctx.Process(
            target=_worker,
            args=(train, config, str(run_dir) if run_dir is not None else None, rank, size, env, str(error_dir)),
            name=f"mtbench-rank{rank}",
        )
        proc.start()
        procs.append(proc)
    return procs


def _worker(
    train: Callable[..., Any], config: dict, run_dir: str | None, rank: int, size: int, env: dict, error_dir: str
) -> None:
    """A spawned rank: join the world and train (writing nothing); its error goes to
    ``error_dir/rank<r>.txt`` for rank 0 to report."""
    from omegaconf import OmegaConf

    os.environ.update(env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    os.environ[_SPAWNED] = "1"
    code = 0
    try:
        train(OmegaConf.create(config), Path(run_dir) if run_dir is not None else None)
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, then this process ends
        from mtbench.train.signals import Interrupted, StopNow

        if isinstance(e, (Interrupted, StopNow)):
            code = 128 + int(e.signum)
        else:
            code = 1
            lost = isinstance(e, RuntimeError) and _peer_lost(e)
            if not lost:  # its own error, not the echo of another rank's end
                (Path(error_dir) / f"rank{rank}.txt").write_text(
                    f"{type(e).__name__}: {e}".strip().splitlines()[0], encoding="utf-8"
                )
                traceback.print_exc()
    sys.stderr.flush()
    sys.exit(code)


def _peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective's failure because another rank ended (not a rank's own error)."""
    text = str(e).lower()
    return any(w in text for w in ("connection", "closed", "timed out", "timeout", "broken pipe", "reset by peer"))


def is_collective_failure(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and (_peer_lost(e) or type(e).__name__ == "DistBackendError")


@contextlib.contextmanager
def run_world(
    cfg: Any, run_dir: Path | None, device: torch.device, train: Callable[..., Any]
) -> Iterator[World | None]:
    """:func:`start` around a block; the world is closed (workers joined) after it."""
    world = start(cfg, run_dir, device, train)
    try:
        yield world
    finally:
        if world is not None:
            world.close()


# -- batch normalisation over the global batch --------------------------------------------


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics are the global batch's (all ranks'),
    on any device and backend (torch's ``nn.SyncBatchNorm`` runs on GPUs only). The mean and
    the variance come from two differentiable all-reduces (sums, then sums of squared
    deviations), so the gradients flow across the ranks as in one process; the running
    statistics are updated from the global ones (the unbiased variance, as ``nn.BatchNorm``).
    Evaluation, and training outside a process group, is plain batch normalisation. The
    parameter and buffer names are ``nn.BatchNorm``'s: checkpoints are interchangeable."""

    group: Any = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.tensor([float(x.numel() // c)], dtype=torch.float64, device=x.device)
        dist.all_reduce(count, group=self.group)
        n = float(count.item())
        mean = all_reduce(x.sum(dims), group=self.group or dist.group.WORLD) / n
        dev = x - mean.view(shape)
        var = all_reduce((dev * dev).sum(dims), group=self.group or dist.group.WORLD) / n
        y = dev * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, group: Any = None) -> nn.Module:
    """``module`` with every batch-normalisation layer replaced by :class:`SyncBatchNorm` over
    the process group ``group`` (None: the default group) (the same parameter and buffer
    tensors: an optimizer built before still holds them)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.group = group
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, group)
        if new_child is not child:
            setattr(module, name, new_child)
    return module

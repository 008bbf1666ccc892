"""The training loop: batches -> model -> per-task losses -> combiner -> optimizer -> metrics.

Only the training step (forward, combiner, optimizer step) is timed; batch preparation and
evaluation are not, so ``train_step_s`` compares combiners honestly. Test metrics are those
of the epoch with the best validation score: the test split never selects anything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mtbench import MtbenchError
from mtbench.combiners import Step, build_combiner
from mtbench.data import Split, Task, build_task
from mtbench.data.base import Labels, index_labels, labels_to
from mtbench.models import build_model
from mtbench.train import checkpoint as checkpoint_file
from mtbench.train.optim import build_optimizer, build_scheduler
from mtbench.train.rng import derive_seed, forked_global_rng, run_generators, set_num_threads

log = logging.getLogger("mtbench")

#: steps between progress-bar updates (the only host synchronisations inside an epoch)
LOG_EVERY = 20


class TrainingFailed(Exception):
    """The run cannot go on (e.g. a non-finite loss); ``str(exc)`` is the reason."""


def resolve_device(name: str) -> torch.device:
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


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, Labels]]:
    """Mini-batches of (uint8 images, labels); shuffled by ``generator``, in order without one."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            idx = slice(start, start + batch_size)
            yield split.images[idx], index_labels(split.labels, idx)
        else:
            idx = order[start : start + batch_size]
            yield split.images[idx], index_labels(split.labels, idx)


class Preprocess:
    """uint8 images on the host -> normalised float images on the training device."""

    def __init__(self, task: Task, device: torch.device):
        self.device = device
        self.mean = task.mean.to(device).view(1, -1, 1, 1)
        self.std = task.std.to(device).view(1, -1, 1, 1)
        self.pin = device.type == "cuda"

    #: ``trainer.channels_last``: hand the batch over in channels-last memory format
    channels_last = False

    def __call__(self, images: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        if self.pin:  # pinned host memory: the copies below are truly asynchronous
            images = images.pin_memory()
            labels = {k: v.pin_memory() for k, v in labels.items()} if isinstance(labels, dict) else labels.pin_memory()
        x = images.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels_to(labels, self.device, non_blocking=self.pin)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, split: Split, prep: Preprocess, batch_size: int) -> dict[str, Any]:
    """The task's metrics on a whole split (scores gathered on the host, then ``task.evaluate``)."""
    model.eval()
    parts: list[Any] = []
    for images, labels in batches(split, batch_size):
        x, _ = prep(images, labels)
        _, outputs = model(x)
        parts.append(task.scores(outputs))
    if isinstance(parts[0], dict):
        scores: Any = {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
    else:
        scores = torch.cat([p.cpu() for p in parts])
    return task.evaluate(scores, split.labels)


class StepTimer:
    """Training-step durations without a host synchronisation per step: on a GPU, CUDA events
    recorded around each step (in the stream, so the time includes any wait for the host)
    are read at the logging interval (``flush``); on a CPU, the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> list[float]:
        """The step's duration in seconds, or nothing yet on a GPU (see ``flush``)."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self._start, end))
            return []
        return [time.perf_counter() - self._start]

    def flush(self) -> list[float]:
        """Durations of the steps not reported yet (one synchronisation, on the last event)."""
        if not self.pending:
            return []
        self.pending[-1][1].synchronize()
        out = [a.elapsed_time(b) / 1000.0 for a, b in self.pending]
        self.pending.clear()
        return out


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


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}; re-run the same command to resume")
        self.signum = signum


class StopNow(KeyboardInterrupt):
    """Raised by the signal handler itself: at a second signal (``again``), or at a first one
    where there is no step to finish (setup, the final test evaluation). A ``KeyboardInterrupt``,
    so that code cleaning up after Ctrl-C cleans up after it too."""

    def __init__(self, signum: int, where: str, again: bool = False):
        name = signal.Signals(signum).name
        text = f"stopped by a second {name}" if again else f"interrupted by {name} {where}; re-run the same command to resume"
        super().__init__(text)
        self.signum = signum
        self.again = again

    def __str__(self) -> str:
        return str(self.args[0])


#: the line printed when a second signal stops a run at once
AGAIN = "mtbench: interrupted again, stopping now"


class StopFlag:
    """SIGTERM/SIGINT handling for a whole run (main thread only).

    During the training steps (``defer()``, the default) a first signal sets ``signum``, which
    the loop checks after each step (it then checkpoints and raises ``Interrupted``); where
    there is nothing to finish (``now(where)``: setup, final test evaluation) a first signal
    raises ``StopNow`` at once. A second signal raises ``StopNow(again=True)``; a third one
    (while that unwinds) ends the process with ``os._exit``. Not installed under submitit (it
    owns the signals there and requeues preempted jobs; the per-epoch checkpoints make the
    requeued job resume).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.immediate = False
        self.where = ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.count += 1
        if self.count > 2:  # still unwinding after the second one
            print(AGAIN, file=sys.stderr, flush=True)
            os._exit(128 + signum)
        if self.count == 2:
            raise StopNow(signum, "", again=True)
        self.signum = signum
        if self.immediate:
            log.warning(f"mtbench: {signal.Signals(signum).name} received {self.where}: stopping")
            raise StopNow(signum, self.where)
        log.warning(f"mtbench: {signal.Signals(signum).name} received: finishing this step, then checkpointing")

    def now(self, where: str) -> None:
        """From here on a first signal stops at once; raises ``Interrupted`` if one came already."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)
        self.where, self.immediate = where, True

    def defer(self) -> None:
        """From here on a first signal only sets ``signum`` (checked after each step)."""
        self.immediate = False

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread() and "SUBMITIT_EXECUTOR" not in os.environ:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def pause_point(name: str) -> None:
    """A place where the fault-injection tests stop a run: with ``MTBENCH_PAUSE_AT=name`` the
    process creates the file ``MTBENCH_PAUSE_MARKER`` and waits, up to ``MTBENCH_PAUSE_S``
    seconds (default 60), until that file is removed. Does nothing otherwise."""
    if os.environ.get("MTBENCH_PAUSE_AT") != name:
        return
    marker = Path(os.environ.get("MTBENCH_PAUSE_MARKER", "mtbench.paused"))
    marker.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + float(os.environ.get("MTBENCH_PAUSE_S", "60"))
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def train(cfg: DictConfig, run_dir: Path | None = None, on_epoch=None, stop: StopFlag | None = None) -> dict[str, Any]:
    """Train one run as configured; return the results that go into ``metrics.json``
    (``history`` holds one row per epoch).

    With ``run_dir``, a checkpoint (model, optimizer, scheduler, combiner state, RNG states,
    position, history) is written atomically to ``run_dir/checkpoint.pt`` after every epoch
    and on SIGTERM/SIGINT (after the current step), and an existing checkpoint is resumed:
    the resumed run ends with the same numbers as an uninterrupted one (on a CPU).
    ``on_epoch(history)`` is called after each epoch. Raises ``TrainingFailed`` (non-finite
    loss or gradient) and ``Interrupted``. ``stop``: the caller's installed ``StopFlag``
    (``mtbench.cli.run`` holds one over the whole run; without it the signals are handled
    during the epochs only); with it a signal during setup or the final test evaluation
    raises ``StopNow``.
    """
    if stop is not None:
        stop.now("before the first step")
    pause_point("setup")
    tcfg = cfg.trainer
    set_num_threads(tcfg.num_threads)  # every run: a sweep's earlier run never leaks its setting
    device = resolve_device(tcfg.device)
    seed = int(cfg.seed)

    # one generator per purpose (mtbench/train/rng.py): what the task's builder draws (only on
    # a cache miss, say) cannot shift the model's initialisation or anything after it
    with forked_global_rng(0, "task build"):
        task = build_task(cfg.task)
    with forked_global_rng(seed, "model init"):
        model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(device)
    combiner = build_combiner(cfg.combiner, task.num_tasks, default_leak=task.default_leak)
    combiner.prepare(model)  # before the first forward pass: fast paths armed for every step
    optimizer = build_optimizer(model.parameters(), tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    prep = Preprocess(task, device)
    if tcfg.get("channels_last", False):  # trainer.channels_last: NHWC activations and kernels
        model = model.to(memory_format=torch.channels_last)
        prep.channels_last = True
    amp = amp_dtype(tcfg)  # trainer.amp: bf16 autocast of the forward pass
    timer = StepTimer(device)

    gens = run_generators(seed, device)  # saved in checkpoints
    data_gen, comb_gen, comb_cpu_gen = gens["batch order"], gens["combiner"], gens["combiner cpu"]
    task.augment_generator = gens["augmentation"]
    torch.manual_seed(derive_seed(seed, "training"))  # anything else drawn while training (dropout)
    columns = {c.key: c for c in task.metric_columns}
    select = str(tcfg.select_metric) if tcfg.get("select_metric") else task.metric_columns[0].key
    if select not in columns:
        raise MtbenchError(f"trainer.select_metric={select!r} is not a metric of task {task.name}; choose one of: {', '.join(columns)}")
    higher = columns[select].higher_is_better
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)

    epochs, bs = int(tcfg.epochs), int(tcfg.batch_size)
    steps_per_epoch = math.ceil(len(task.train) / bs)
    show = bool(tcfg.progress) and sys.stderr.isatty()

    # -- state (saved in checkpoints) ------------------------------------------------------
    state: dict[str, Any] = {
        "epoch": 1,  # the epoch in progress (1-based)
        "step": 0,  # steps of that epoch already done
        "epoch_start_data_rng": data_gen.get_state(),  # to replay the epoch's batch order
        "loss_sum": 0.0,
        "epoch_step_s": 0.0,
        "step_times": [],
        "examples": 0,
        "history": [],
        "best": None,  # {"epoch", "val"}
        "best_model": None,
    }
    ckpt_path = run_dir / CHECKPOINT if run_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = _resume(ckpt_path, model, optimizer, scheduler, combiner, gens, device)
        log.info(f"[{cfg.name}] {combiner.name} seed={seed}: resuming from {ckpt_path} (epoch {state['epoch']}, step {state['step']})")

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        payload = {
            "format": 1,
            "state": state,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "combiner": combiner.state_dict(),
            "rng": {name: g.get_state() for name, g in gens.items()},
            "torch_rng": torch.get_rng_state(),
        }
        atomic_save(payload, ckpt_path)

    with contextlib.nullcontext(stop) if stop is not None else StopFlag() as stop:
        stop.defer()
        pause_point("steps")
        while state["epoch"] <= epochs:
            epoch = state["epoch"]
            model.train()
            data_gen.set_state(state["epoch_start_data_rng"])
            # NaN watch, on the device: no host synchronisation outside the logging interval
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            bad_tasks = torch.zeros(task.num_tasks, dtype=torch.bool, device=device)
            bad_kind = torch.zeros((), dtype=torch.long, device=device)  # 1 loss, 2 gradient
            loss_sum = torch.full((), state["loss_sum"], device=device)
            bar = tqdm(total=steps_per_epoch, initial=state["step"], desc=f"{combiner.name} epoch {epoch}/{epochs}", disable=not show, leave=False, file=sys.stderr)
            for i, (images, labels) in enumerate(batches(task.train, bs, data_gen)):
                if i < state["step"]:
                    continue  # replaying the order of an epoch resumed mid-way
                x, y = prep(images, labels)
                x, y = task.extend_batch(task.augment(x), y)
                if combiner.needs_input_grad:
                    x.requires_grad_(True)
                timer.start()
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, amp):
                    rep, outputs = model(x)
                    losses = task.losses(outputs, y)
                combiner.backward(Step(model, x, rep, outputs, losses, comb_gen, comb_cpu_gen))
                optimizer.step()
                for dt in timer.stop():  # on a GPU: read at the logging interval, no sync here
                    state["step_times"].append(dt)
                    state["epoch_step_s"] += dt
                state["examples"] += int(x.shape[0])
                state["step"] = i + 1
                loss_sum += losses.detach().sum()
                _watch(losses, model, i + 1, first_bad, bad_tasks, bad_kind)
                last = i + 1 == steps_per_epoch
                if (i + 1) % LOG_EVERY == 0 or last or stop.signum is not None:
                    for dt in timer.flush():  # the GPU steps' times since the last interval
                        state["step_times"].append(dt)
                        state["epoch_step_s"] += dt
                    if int(first_bad) >= 0:
                        raise TrainingFailed(_bad_reason(epoch, int(first_bad), int(bad_kind), bad_tasks, task.task_names))
                    state["loss_sum"] = float(loss_sum)
                    bar.set_postfix(loss=f"{state['loss_sum'] / (i + 1):.4f}", ex_s=f"{bs * (i + 1) / max(state['epoch_step_s'], 1e-9):.0f}")
                    bar.update(i + 1 - bar.n)
                if stop.signum is not None and not last:
                    checkpoint()
                    raise Interrupted(stop.signum, f"at epoch {epoch}, step {i + 1}")
            bar.close()
            if scheduler is not None:
                scheduler.step()

            if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
                raise TrainingFailed(f"non-finite parameters or statistics after epoch {epoch} (every step's losses and gradients were finite)")
            val = evaluate(model, task, task.val, prep, int(tcfg.eval_batch_size))
            row = {
                "epoch": epoch,
                "train_loss": state["loss_sum"] / steps_per_epoch,
                **{f"val_{k}": val[k] for k in columns},
                "train_step_s": state["epoch_step_s"] / steps_per_epoch,
                "lr": optimizer.param_groups[0]["lr"],
                **{f"combiner_{k}": v for k, v in combiner.log_values().items()},
            }
            state["history"].append(row)
            if state["best"] is None or better(val[select], state["best"]["val"][select]):
                state["best"] = {"epoch": epoch, "val": val}
                state["best_model"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            shown = "  ".join(f"val {c.header} {val[c.key]:.2f}" for c in task.metric_columns)
            log.info(f"[{cfg.name}] {combiner.name} seed={seed} epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}  {shown}")
            state.update(epoch=epoch + 1, step=0, epoch_start_data_rng=data_gen.get_state(), loss_sum=0.0, epoch_step_s=0.0)
            checkpoint()
            if on_epoch is not None:
                on_epoch(state["history"])
            if stop.signum is not None and epoch < epochs:
                raise Interrupted(stop.signum, f"after epoch {epoch}")

    best = state["best"]
    assert best is not None and state["best_model"] is not None
    stop.now("during the final test evaluation")  # resumable: the last epoch's checkpoint is written
    pause_point("test")
    model.load_state_dict(state["best_model"])
    test = evaluate(model, task, task.test, prep, int(tcfg.eval_batch_size))
    stop.defer()
    step_times = state["step_times"]
    total_step_s = sum(step_times)
    return {
        "best_epoch": best["epoch"],
        "select_metric": select,
        "metric_columns": [[c.key, c.header, c.higher_is_better] for c in task.metric_columns],
        "val": {k: best["val"][k] for k in columns},
        "test": {k: test[k] for k in columns},
        "test_per_attribute": test.get("per_attribute"),
        "train_step_s": statistics.median(step_times),
        "examples_per_s": state["examples"] / total_step_s if total_step_s > 0 else float("nan"),
        "steps": len(step_times),
        "device": str(device),
        "history": state["history"],
    }


def _watch(losses, model, step, first_bad, bad_tasks, bad_kind) -> None:
    """Record (on the device, no synchronisation) the first step with a non-finite loss or gradient."""
    finite_losses = torch.isfinite(losses.detach())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch._foreach_norm(grads) if grads else []
    finite_grads = torch.stack(norms).isfinite().all() if norms else torch.ones((), dtype=torch.bool, device=losses.device)
    bad_now = ~(finite_losses.all() & finite_grads)
    new = bad_now & (first_bad < 0)
    first_bad.copy_(torch.where(new, torch.full_like(first_bad, step), first_bad))
    bad_tasks.copy_(torch.where(new, ~finite_losses, bad_tasks))
    kind = torch.where(finite_losses.all(), torch.full_like(bad_kind, 2), torch.full_like(bad_kind, 1))
    bad_kind.copy_(torch.where(new, kind, bad_kind))


def _bad_reason(epoch: int, step: int, kind: int, bad_tasks: torch.Tensor, names: list[str]) -> str:
    if kind == 1:
        tasks = [names[j] for j in torch.nonzero(bad_tasks.cpu()).flatten().tolist()]
        return f"non-finite loss at epoch {epoch}, step {step}, task(s): {', '.join(tasks)}"
    return f"non-finite gradient at epoch {epoch}, step {step} (all task losses finite; the combined gradient overflowed)"


CHECKPOINT = "checkpoint.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save with a SHA-256 to a temporary file in the same folder, then rename: never
    half a checkpoint (see :mod:`mtbench.train.checkpoint`)."""
    checkpoint_file.save(obj, path)


def _resume(path: Path, model, optimizer, scheduler, combiner, gens, device) -> dict[str, Any]:
    try:
        ckpt = checkpoint_file.load(path)  # a checksum mismatch: its own one-line error
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        combiner.load_state_dict(ckpt["combiner"])
        for name, g in gens.items():
            g.set_state(ckpt["rng"][name])
        torch.set_rng_state(ckpt["torch_rng"])
    except MtbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        raise MtbenchError(f"checkpoint {path} cannot be resumed ({type(e).__name__}: {e}); delete it to start the run again, or use force=true") from None
    return ckpt["state"]

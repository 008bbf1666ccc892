"""The training loop: batches -> model -> per-task losses -> combiner -> optimizer -> metrics.

Only the training step (forward, combiner, optimizer step; :class:`~mtbench.train.step.TrainStep`)
is timed; batch preparation and evaluation are not, so ``train_step_s`` compares combiners
honestly. Test metrics are those of the epoch with the best validation score: the test split
never selects anything.

The pieces live in their own modules (some re-exported here): batches and evaluation
(``train/batches.py``), the device, mixed precision and timing (``train/device.py``), the step
(``train/step.py``), the NaN watch (``train/nan_watch.py``), the run's position
(``train/state.py``), early stopping (``train/early_stopping.py``), checkpoints
(``train/checkpoint.py``), the kept model (``train/saved_model.py``), the profiler
(``train/profiling.py``) and signal handling (``train/signals.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from mtbench.combiners import build_combiner
from mtbench.combiners.base import check_representation
from mtbench.data import build_task
from mtbench.errors import MtbenchError
from mtbench.models import build_model
from mtbench.train import checkpoint as checkpoint_file
from mtbench.train import distributed
from mtbench.train.batches import Preprocess, batches, debug_splits, evaluate, second_batch
from mtbench.train.checkpoint import CHECKPOINT
from mtbench.train.device import (
    AMP_DTYPES,
    StepTimer,
    amp_dtype,
    autocast,
    channels_last,
    rank_device,
    resolve_device,
    retain_freed_memory,
    sample_load,
    timing_fields,
)
from mtbench.train.diagnostics import Diagnostics
from mtbench.train.early_stopping import early_stopping_record, stopped_early
from mtbench.train.nan_watch import bad_reason, watch
from mtbench.train.optim import build_optimizer, build_scheduler
from mtbench.train.profiling import Profile
from mtbench.train.rng import derive_seed, forked_global_rng, make_generator, run_generators, set_num_threads
from mtbench.train.saved_model import MODEL, save_model
from mtbench.train.signals import AGAIN, Interrupted, StopFlag, StopNow, pause_point
from mtbench.train.state import RunState
from mtbench.train.step import TrainStep

__all__ = [
    "AGAIN",
    "AMP_DTYPES",
    "CHECKPOINT",
    "LOG_EVERY",
    "Interrupted",
    "Preprocess",
    "RunState",
    "StepTimer",
    "StopFlag",
    "StopNow",
    "Trainer",
    "TrainingFailed",
    "amp_dtype",
    "atomic_save",
    "autocast",
    "batches",
    "evaluate",
    "pause_point",
    "resolve_device",
    "train",
]

log = logging.getLogger("mtbench")

#: steps between the logging interval's reads (the NaN watch, the GPU step times: with the
#: progress bar's refreshes, the only host synchronisations inside an epoch)
LOG_EVERY = 20

#: seconds between progress-bar refreshes (when the bar is shown): the host's clock is read at
#: each step (no synchronisation), the device only when the bar is refreshed
REFRESH_S = 1.0


class TrainingFailed(Exception):
    """The run cannot go on (e.g. a non-finite loss); ``str(exc)`` is the reason."""


class Trainer:
    """One configured run, set up (task, model, combiner, optimizer, generators; resumed from
    ``run_dir``'s checkpoint when there is one) and trained epoch by epoch.

    The set-up order is fixed, and so are the run's numbers: the task is built and set up
    (``Task.setup(device)``) on a fork of the global generator, the model initialised on
    another (``mtbench/train/rng.py``).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path | None = None, world: distributed.World | None = None):
        self.cfg = cfg
        tcfg = self.tcfg = cfg.trainer
        set_num_threads(tcfg.num_threads)  # every run: a sweep's earlier run never leaks its setting
        retain_freed_memory(bool(tcfg.get("retain_freed_memory", True)))  # (likewise)
        device = self.device = rank_device(resolve_device(tcfg.device), world)
        #: trainer.strategy=ddp: this process's place in the run's process group (None: one process)
        self.world = world
        if world is not None:
            distributed.check_batch_size(tcfg)
        seed = self.seed = int(cfg.seed)

        # one generator per purpose: what the task's builder draws (only on a cache miss, say)
        # cannot shift the model's initialisation or anything after it
        with forked_global_rng(0, "task build"):
            task = self.task = build_task(cfg.task)
            task.setup(device)
        with forked_global_rng(seed, "model init"):
            model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(device)
        combiner = self.combiner = build_combiner(
            cfg.combiner, task.num_tasks, default_leak=task.default_leak, task_names=task.task_names
        )
        if world is not None:
            distributed.check_task(task)
            distributed.check_combiner(combiner)
            if tcfg.get("sync_batchnorm", True):  # a training batch's statistics: the global batch's
                model = distributed.convert_sync_batchnorm(model, world.group)
        check_representation(combiner, cfg.model.name, getattr(model, "shared_representation", True))
        combiner.prepare(model)  # before the first forward pass: fast paths armed for every step
        self.optimizer = build_optimizer(model.parameters(), tcfg)
        self.scheduler = build_scheduler(self.optimizer, tcfg)
        self.prep = Preprocess(task, device)
        if tcfg.get("channels_last", False):  # trainer.channels_last: NHWC activations and kernels
            model = channels_last(model)
            self.prep.channels_last = True
        self.model = model
        amp = amp_dtype(tcfg)  # trainer.amp: bf16 autocast of the forward pass
        self.timer = StepTimer(device)

        self.gens = run_generators(seed, device)  # saved in checkpoints
        if combiner.needs_second_batch:  # SDMGrad, MoDo: a second batch per step, from its own generator
            self.gens["second batch"] = make_generator(seed, "second batch")
        self.data_gen = self.gens["batch order"]
        task.augment_generator = self.gens["augmentation"]
        self.step = TrainStep(
            model,
            combiner,
            self.optimizer,
            task.losses,
            device,
            amp,
            self.gens["combiner"],
            self.gens["combiner cpu"],
            column_losses=task.column_losses,
            group=world.group if world is not None else None,
        )
        self.diagnostics: Diagnostics | None = None
        if tcfg.get("diagnostics", False):  # trainer.diagnostics: per-epoch diag_* columns
            self.diagnostics = Diagnostics(combiner, task.task_names, getattr(model, "shared_representation", True))
            self.step.diagnostics = self.diagnostics
        torch.manual_seed(derive_seed(seed, "training"))  # anything else drawn while training (dropout)
        self.columns = {c.key: c for c in task.metric_columns}
        select = self.select = str(tcfg.select_metric) if tcfg.get("select_metric") else task.metric_columns[0].key
        if select not in self.columns:
            raise MtbenchError(
                f"trainer.select_metric={select!r} is not a metric of task {task.name}; choose one of: {', '.join(self.columns)}"
            )
        self.higher = self.columns[select].higher_is_better
        # trainer.report: best_val (the test metrics of the best validation epoch) | last_k (the
        # means of the last report_k epochs' validation and test metrics, as the dense papers)
        self.report = str(tcfg.get("report") or "best_val")
        self.report_k = min(int(tcfg.get("report_k") or 10), int(tcfg.epochs))

        self.epochs, self.batch_size = int(tcfg.epochs), int(tcfg.batch_size)
        self.eval_batch_size = int(tcfg.eval_batch_size)
        debug_splits(task, tcfg, self.batch_size)  # trainer.overfit_batches, trainer.max_eval_examples
        self.steps_per_epoch = math.ceil(len(task.train) / self.batch_size)
        if tcfg.get("max_steps_per_epoch"):  # a few batches per epoch (debug=fast)
            self.steps_per_epoch = min(self.steps_per_epoch, int(tcfg.max_steps_per_epoch))
        self.profile_steps = int(tcfg.get("profile_steps") or 0)  # debug=profile: torch.profiler
        self.run_dir = run_dir
        self.show = bool(tcfg.progress) and sys.stderr.isatty() and (world is None or world.main)  # one bar
        self.clock = time.monotonic  # the progress bar's refresh clock
        self.bar: Any = None  # the epoch's progress bar, closed by close_bar

        self.state = RunState(epoch_start_data_rng=self.data_gen.get_state())  # saved in checkpoints
        self.ckpt_path = run_dir / CHECKPOINT if run_dir is not None else None
        self.identity = checkpoint_file.run_identity(cfg)  # what a checkpoint is bound to
        if self.ckpt_path is not None and self.ckpt_path.exists():
            saved = checkpoint_file.resume_run(
                self.ckpt_path,
                model,
                self.optimizer,
                self.scheduler,
                combiner,
                self.gens,
                self.identity,
                self.steps_per_epoch,
            )
            self.state = RunState.from_dict(saved)
            if self.diagnostics is not None:  # the diagnostics of an epoch resumed mid-way
                self.diagnostics.load_state_dict(self.state.diagnostics)
            log.info(
                f"[{cfg.name}] {combiner.name} seed={seed}: resuming from {self.ckpt_path} (epoch {self.state.epoch}, step {self.state.step})"
            )

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher else a < b

    def checkpoint(self) -> None:
        """Write the checkpoint (atomically; nothing without a run folder; rank 0 only)."""
        if self.ckpt_path is not None and (self.world is None or self.world.main):
            if self.diagnostics is not None:  # (the epoch's diagnostics so far, in the state's dict)
                self.state.diagnostics = self.diagnostics.state_dict()
            checkpoint_file.save_run(
                self.ckpt_path,
                self.state,
                self.model,
                self.optimizer,
                self.scheduler,
                self.combiner,
                self.gens,
                self.identity,
            )

    def train_epoch(self, stop: StopFlag) -> None:
        """The steps of the epoch in progress, from ``state.step`` on (its batch order replayed).
        After a step during which a signal came: checkpoint and ``Interrupted``."""
        state, task, model, device, world = self.state, self.task, self.model, self.device, self.world
        epoch, bs, steps = state.epoch, self.batch_size, self.steps_per_epoch
        model.train()
        sample_load(state)
        self.data_gen.set_state(state.epoch_start_data_rng)
        # NaN watch, on the device: no host synchronisation outside the logging interval
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        bad_tasks = torch.zeros(task.num_tasks, dtype=torch.bool, device=device)
        bad_kind = torch.zeros((), dtype=torch.long, device=device)  # 1 loss, 2 gradient
        loss_sum = torch.full((), state.loss_sum, device=device)
        bar = self.bar = tqdm(
            total=steps,
            initial=state.step,
            desc=f"{self.combiner.name} epoch {epoch}/{self.epochs}",
            disable=not self.show,
            leave=False,
            file=sys.stderr,
        )
        refreshed = self.clock()
        prof = (
            Profile(self.run_dir, self.profile_steps, device)
            if self.profile_steps and epoch == 1 and state.step == 0 and (world is None or world.main)
            else None
        )
        for i, (images, labels) in enumerate(batches(task.train, bs, self.data_gen)):
            if i >= steps:
                break  # trainer.max_steps_per_epoch
            if i < state.step:
                continue  # replaying the order of an epoch resumed mid-way
            if prof is not None:
                prof.step(i)
            x, y = self.prep(images, labels)
            x, y = task.extend_batch(*task.augment_batch(x, y))
            batch, scale = int(x.shape[0]), None
            second = self.second_batch(batch)  # (the global batch's size; under DDP sliced alike)
            if world is not None:  # the global batch, prepared alike on every rank: this rank's slice
                x, y = world.local_batch(x, y)
                scale = world.loss_scale(task, batch, y, device)
                if second is not None:
                    x2, y2 = world.local_batch(*second)
                    second = (x2, y2, world.loss_scale(task, batch, y2, device))
            if self.step.needs_input_grad:
                x.requires_grad_(True)
            self.timer.start()
            try:
                losses = self.step(x, y, second, scale)
            except ValueError as e:  # a solver's check (mgda, nash_mtl, gradvac, cagrad): name where
                if "NaN or infinite" not in str(e):
                    raise
                raise TrainingFailed(f"non-finite Gram matrix at epoch {epoch}, step {i + 1} ({e})") from e
            state.add_step_times(self.timer.stop())  # on a GPU: read at the logging interval, no sync here
            state.step_cpu_times += self.timer.take_cpu()  # on a CPU: the step's process CPU time
            state.examples += batch
            state.step = i + 1
            if world is not None:  # the global batch's losses (the same on every rank)
                losses = world.mean_losses(losses)
            loss_sum += losses.detach().sum()
            watch(losses, model, i + 1, first_bad, bad_tasks, bad_kind)
            last = i + 1 == steps
            due = self.show and self.clock() - refreshed >= REFRESH_S  # by time, about once a second
            if world is not None:  # every rank at the same steps (the signal's check is a collective)
                interval = (i + 1) % LOG_EVERY == 0 or last
                stopping = world.agree_signal(stop.signum) if interval else None
                if stopping is not None and stop.signum is None:
                    stop.signum = stopping  # another rank's signal: stop at the same step
                stopping_now = stopping is not None
            else:
                interval = (i + 1) % LOG_EVERY == 0 or last or stop.signum is not None or due
                stopping_now = stop.signum is not None
            if interval:
                state.add_step_times(self.timer.flush())  # the GPU steps' times since the last interval
                if int(first_bad) >= 0:
                    raise TrainingFailed(bad_reason(epoch, int(first_bad), int(bad_kind), bad_tasks, task.task_names))
                state.loss_sum = float(loss_sum)
                bar.set_postfix(
                    {
                        "loss": f"{state.loss_sum / (i + 1):.4f}",
                        "img/s": f"{bs * (i + 1) / max(state.epoch_step_s, 1e-9):.0f}",
                    },
                    refresh=False,
                )
                bar.update(i + 1 - bar.n)
                refreshed = self.clock()
            if stopping_now and not last:
                self.close_bar()  # the message that follows starts on its own line
                self.checkpoint()
                raise Interrupted(stop.signum, f"at epoch {epoch}, step {i + 1}")
        if prof is not None:
            prof.close()
        self.close_bar()

    def second_batch(self, size: int) -> tuple[torch.Tensor, Any] | None:
        """A combiner that ``needs_second_batch``: a second batch of ``size`` examples from the
        run's ``second batch`` generator (:func:`~mtbench.train.batches.second_batch`; its
        augmentation draws from the same generator), prepared as the first; else None."""
        gen = self.gens.get("second batch")
        if gen is None:
            return None
        task = self.task
        x2, y2 = self.prep(*second_batch(task.train, size, gen))
        augment_gen, task.augment_generator = task.augment_generator, gen
        try:
            return task.extend_batch(*task.augment_batch(x2, y2))
        finally:
            task.augment_generator = augment_gen

    def close_bar(self) -> None:
        """Close the epoch's progress bar (its line cleared): before any message."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self) -> dict[str, Any]:
        """After the epoch's steps: the schedule's step, the validation metrics, the history
        row (returned), the best epoch so far, the move to the next epoch and the checkpoint."""
        state, model, epoch, steps = self.state, self.model, self.state.epoch, self.steps_per_epoch
        sample_load(state)
        if self.scheduler is not None:
            self.scheduler.step()
        if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
            raise TrainingFailed(
                f"non-finite parameters or statistics after epoch {epoch} (every step's losses and gradients were finite)"
            )
        val = evaluate(model, self.task, self.task.val, self.prep, self.eval_batch_size, self.world)
        row = {
            "epoch": epoch,
            "train_loss": state.loss_sum / steps,
            **{f"val_{k}": val[k] for k in self.columns},
            "train_step_s": state.epoch_step_s / steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"combiner_{k}": v for k, v in self.combiner.log_values().items()},
            **(self.diagnostics.epoch_values() if self.diagnostics is not None else {}),
        }
        state.history.append(row)
        self.combiner.end_epoch()  # (after the row: it logs the weights the epoch trained with)
        if self.report == "last_k" and epoch > self.epochs - self.report_k:
            test = evaluate(model, self.task, self.task.test, self.prep, self.eval_batch_size, self.world)
            state.reported.append(
                {"epoch": epoch, "val": {k: val[k] for k in self.columns}, "test": {k: test[k] for k in self.columns}}
            )
        if state.best is None or self.better(val[self.select], state.best["val"][self.select]):
            state.best = {"epoch": epoch, "val": val}
            state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        shown = "  ".join(f"val {c.header} {val[c.key]:.2f}" for c in self.task.metric_columns)
        if self.world is None or self.world.main:
            log.info(
                f"[{self.cfg.name}] {self.combiner.name} seed={self.seed} epoch {epoch}/{self.epochs}: loss {row['train_loss']:.4f}  {shown}"
            )
        state.next_epoch(self.data_gen.get_state())
        self.checkpoint()
        return row

    def test(self) -> dict[str, Any]:
        """The reported metrics: the best epoch's model on the test split (``trainer.report=
        best_val``; the model is left loaded), or the means of the last k epochs' validation and
        test metrics (``last_k``; the model stays the last epoch's); the results that go into
        ``metrics.json``."""
        state = self.state
        best = state.best
        assert best is not None and state.best_model is not None
        if self.report == "last_k":
            rows = state.reported[-self.report_k :]
            val = {k: statistics.fmean(float(r["val"][k]) for r in rows) for k in self.columns}
            test = {k: statistics.fmean(float(r["test"][k]) for r in rows) for k in self.columns}
            report_epochs = [int(r["epoch"]) for r in rows]
        else:
            self.model.load_state_dict(state.best_model)
            test = evaluate(self.model, self.task, self.task.test, self.prep, self.eval_batch_size, self.world)
            val = {k: best["val"][k] for k in self.columns}
            report_epochs = [int(best["epoch"])]
        total_step_s = sum(state.step_times)
        return {
            "best_epoch": best["epoch"],
            "select_metric": self.select,
            "metric_columns": [[c.key, c.header, c.higher_is_better] for c in self.task.metric_columns],
            "tasks": list(self.task.task_names),
            "report": self.report,
            "report_k": self.report_k if self.report == "last_k" else None,
            "report_epochs": report_epochs,
            "val": val,
            "test": {k: test[k] for k in self.columns},
            "test_per_attribute": test.get("per_attribute"),
            "train_step_s": statistics.median(state.step_times),
            "examples_per_s": state.examples / total_step_s if total_step_s > 0 else float("nan"),
            **timing_fields(state, self.device),
            "steps": len(state.step_times),
            "device": str(self.device),
            "history": state.history,
        }


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
    with distributed.run_world(cfg, run_dir, rank_device(resolve_device(cfg.trainer.device), None), train) as world:
        try:
            return _train(cfg, run_dir, on_epoch, stop, world)
        except Exception as e:
            if world is None or not distributed.is_collective_failure(e):
                raise
            # another rank ended (its error, a kill) or stopped answering: fail with its reason
            failed = world.failure() if world.workers else None
            raise TrainingFailed(
                failed or f"another process of the run failed or stopped answering ({str(e).splitlines()[0][:200]})"
            ) from e


def _train(
    cfg: DictConfig, run_dir: Path | None, on_epoch: Any, stop: StopFlag | None, world: distributed.World | None
) -> dict[str, Any]:
    """:func:`train`'s work in this process (``world``: its place in a DDP run, or None)."""
    main = world is None or world.main
    run = Trainer(cfg, run_dir, world)
    with contextlib.nullcontext(stop) if stop is not None else StopFlag() as stop:
        stop.defer()
        pause_point("steps")
        while run.state.epoch <= run.epochs and not stopped_early(run.tcfg, run.state):
            epoch = run.state.epoch
            try:
                run.train_epoch(stop)
            finally:  # a failure or an interrupt: the bar is gone before its message
                run.close_bar()
            run.end_epoch()
            if on_epoch is not None and main:
                on_epoch(run.state.history)
            signum = world.agree_signal(stop.signum) if world is not None else stop.signum
            if signum is not None and epoch < run.epochs and not stopped_early(run.tcfg, run.state):
                raise Interrupted(signum, f"after epoch {epoch}")
    stop.now("during the final test evaluation")  # resumable: the last epoch's checkpoint is written
    pause_point("test")
    save = str(cfg.trainer.get("save_model", "best")).lower()
    last = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()} if save == "last" else None
    result = run.test()
    if run_dir is not None and getattr(run.task, "dense", False) and main:
        from mtbench.train.predictions import PREDICTIONS, write_predictions

        write_predictions(run.model, run.task, run.prep, Path(run_dir) / PREDICTIONS)  # the reported model
    result["early_stopping"] = early_stopping_record(run.tcfg, run.state, run.select, run.epochs)
    if run_dir is not None and save != "none" and main:
        epoch = run.state.history[-1]["epoch"] if last is not None else result["best_epoch"]
        save_model(Path(run_dir) / MODEL, last if last is not None else run.state.best_model, save, epoch)
    if world is not None:
        result["processes"] = world.size
    stop.defer()
    return result


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save with a SHA-256 to a temporary file in the same folder, then rename: never
    half a checkpoint (see :mod:`mtbench.train.checkpoint`)."""
    checkpoint_file.save(obj, path)

"""The ``trainer/`` options (configs/trainer/default.yaml), each with its type and range.

:func:`check_trainer` checks them all before a run starts; a bad value is a one-line error
naming ``trainer.<option>``, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.options import check_bool, check_choice, check_int, check_number, check_str
from mtbench.train.optim import OPTIMIZERS, SCHEDULERS, is_dotted, optimizer_class, scheduler_class

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise MtbenchError(f"{key}={value!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    from mtbench.train.device import resolve_device

    resolve_device(value)  # cuda without a visible GPU: its own one-line error
    return value


def _optimizer(key: str, value: Any) -> Any:
    if isinstance(value, str) and is_dotted(value):
        return optimizer_class(value)  # importable and an Optimizer subclass, else one line
    return check_choice(key, value, OPTIMIZERS, lower=True)


def _scheduler(key: str, value: Any) -> Any:
    if isinstance(value, str) and is_dotted(value):
        return scheduler_class(value)
    return check_choice(key, value, SCHEDULERS, lower=True)


def _mapping(key: str, value: Any) -> Any:
    if value is not None and not hasattr(value, "keys"):
        raise MtbenchError(f"{key} must map argument names to values, e.g. {key}.momentum=0.5 (got {value!r})")
    return value


def _amp(key: str, value: Any) -> Any:
    from mtbench.train.device import AMP_DTYPES

    if str(value).lower() not in AMP_DTYPES:
        raise MtbenchError(f"{key}={value!r} is not allowed; choose false or bf16")
    return value


def _early_stopping(key: str, value: Any) -> None:
    """``trainer.early_stopping``: a mapping with ``patience`` (null, or an integer >= 1)."""
    if value is None:
        return
    if not hasattr(value, "keys"):
        raise MtbenchError(f"{key} must be a mapping such as {{patience: 3}} (got {value!r}); set {key}.patience=3")
    unknown = sorted(set(value.keys()) - {"patience"})
    if unknown:
        raise MtbenchError(f"{key}.{unknown[0]} is not an option; {key} has patience only")
    check_int(f"{key}.patience", value.get("patience"), minimum=1, optional=True)


#: trainer option -> its check (``check(key, value)``); options not listed are not checked
TRAINER_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "epochs": lambda k, v: check_int(k, v, minimum=1),
    "batch_size": lambda k, v: check_int(k, v, minimum=1),
    "eval_batch_size": lambda k, v: check_int(k, v, minimum=1),
    "optimizer": _optimizer,
    "optimizer_options": _mapping,
    "lr": lambda k, v: check_number(k, v, minimum=0, min_open=True),
    "weight_decay": lambda k, v: check_number(k, v, minimum=0),
    "momentum": lambda k, v: check_number(k, v, minimum=0, maximum=1, max_open=True),
    "scheduler": _scheduler,
    "scheduler_options": _mapping,
    "step_size": lambda k, v: check_int(k, v, minimum=1),
    "gamma": lambda k, v: check_number(k, v, minimum=0, maximum=1, min_open=True),
    "device": _device,
    "num_threads": lambda k, v: check_int(k, v, minimum=1, optional=True),
    "retain_freed_memory": check_bool,
    "progress": check_bool,
    "diagnostics": check_bool,
    "amp": _amp,
    "channels_last": check_bool,
    "select_metric": lambda k, v: check_str(k, v, optional=True),
    "save_model": lambda k, v: check_choice(k, v, ("best", "last", "none"), lower=True),
    "report": lambda k, v: check_choice(k, v, ("best_val", "last_k")),
    "report_k": lambda k, v: check_int(k, v, minimum=1),
    "max_steps_per_epoch": lambda k, v: check_int(k, v, minimum=1, optional=True),
    "overfit_batches": lambda k, v: check_int(k, v, minimum=1, optional=True),
    "max_eval_examples": lambda k, v: check_int(k, v, minimum=1, optional=True),
    "profile_steps": lambda k, v: check_int(k, v, minimum=1, optional=True),
    "early_stopping": _early_stopping,
    "strategy": lambda k, v: check_choice(k, v, ("single", "ddp")),
    "devices": lambda k, v: check_int(k, v, minimum=1),
    "sync_batchnorm": check_bool,
    "collective_timeout_s": lambda k, v: check_number(k, v, minimum=0, min_open=True),
}


def check_trainer(tcfg: Any) -> None:
    """Check every declared trainer option present in ``tcfg`` (the ``trainer`` node)."""
    for key, check in TRAINER_OPTIONS.items():
        if key in tcfg:
            check(f"trainer.{key}", tcfg.get(key))
    from mtbench.train.distributed import check_batch_size

    check_batch_size(tcfg)  # ddp: the global batch splits evenly over the processes

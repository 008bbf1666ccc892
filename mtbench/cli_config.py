"""One job's config before it trains: ``per_combiner`` settings applied, ``combiner.*`` options
the job's combiner does not have dropped, and every option checked (``validate``; ``check_job``:
the one-line reason a job is refused, before Hydra creates its folder)."""

from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mtbench.errors import MtbenchError
from mtbench.variant import applies, identity, named_classes

log = logging.getLogger("mtbench")

#: (combiner, option) pairs already reported as not applying, so the log says so once per process
_DROPPED: set[tuple[str, str]] = set()


def validate(cfg: DictConfig) -> None:
    """Reject options that cannot work before any run starts, naming the option, the value
    and what is allowed (one line): the trainer's, the seed, the model's, the task's (checked
    without building its data) and the combiner's (the combiner is constructed)."""
    from mtbench.combiners import build_combiner
    from mtbench.combiners.base import check_representation
    from mtbench.data import check_task
    from mtbench.models import check_model, shared_representation
    from mtbench.models.dense import check_model_for_task
    from mtbench.options import check_bool, check_int
    from mtbench.report.loggers import check_loggers
    from mtbench.train.options import check_trainer

    check_trainer(cfg.trainer)
    _check_gpu_preset(cfg)
    check_int("seed", cfg.get("seed"), minimum=0)
    check_bool("force", cfg.get("force", False))
    check_loggers(cfg.get("logger"))
    check_model(cfg.model)
    spec = check_task(cfg.task)
    if spec is None:
        return
    check_model_for_task(cfg.model, getattr(spec, "dense", None))  # a per-pixel task needs a dense model
    select = cfg.trainer.get("select_metric")
    if select and select not in spec.metric_keys:
        raise MtbenchError(
            f"trainer.select_metric={select!r} is not a metric of task {cfg.task.name}; choose one of: {', '.join(spec.metric_keys)}"
        )
    combiner = build_combiner(cfg.combiner, spec.num_tasks, default_leak=spec.default_leak, task_names=spec.task_names)
    # a combiner at the shared representation needs a model that has one (not segnet_mtan)
    check_representation(combiner, cfg.model.name, shared_representation(cfg.model))
    from mtbench.train.distributed import check_combiner, is_ddp

    if is_ddp(cfg.trainer):
        check_combiner(combiner)  # trainer.strategy=ddp: a combiner that cannot be exact refuses


#: the presets sized for a GPU: refused where none is visible unless trainer.device is explicit
GPU_PRESETS = ("paper_celeba", "paper_cifar100", "kurin_celeba", "famo_celeba")


def _check_gpu_preset(cfg: DictConfig) -> None:
    """``experiment=<a GPU preset>`` with ``trainer.device=auto`` on a machine without a CUDA GPU:
    a one-line error (the run would fall back to the CPU silently, many times slower) naming
    ``trainer.device=cpu``, which runs it on the CPU anyway."""
    if str(cfg.trainer.get("device", "auto")) != "auto":
        return
    hydra_node = cfg.get("hydra") if "hydra" in cfg else None
    if hydra_node is not None:
        choices = hydra_node.runtime.choices
    elif HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    else:
        return
    preset = choices.get("experiment")
    if preset not in GPU_PRESETS:
        return
    import torch

    if not torch.cuda.is_available():
        raise MtbenchError(
            f"experiment={preset} is sized for a GPU and no CUDA GPU is visible; add trainer.device=cpu to run it "
            "on the CPU anyway (many times slower: hours per run), or run it on a machine with a GPU"
        )


def _drop_inapplicable(cfg: DictConfig, overrides: list[str]) -> None:
    """Remove the ``++combiner.<option>`` keys that this job's combiner does not declare (an
    option given to a sweep of several combiners applies to those that have it)."""
    name = str(cfg.combiner.name)
    if "combiner" in named_classes(overrides):
        return  # a class given on the command line decides its own options
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+")
        if key.startswith("combiner.") and not applies(key, name):
            option = key.split(".")[1]
            with open_dict(cfg.combiner):
                cfg.combiner.pop(option, None)
            if (name, option) not in _DROPPED:
                _DROPPED.add((name, option))
                log.info(f"mtbench: {key} does not apply to combiner={name}; its runs go on without it")


def _apply_per_combiner(cfg: DictConfig, overrides: list[str]) -> None:
    """``per_combiner.<this job's combiner>``'s ``trainer.*`` and ``combiner.*`` settings into the
    job's config, except the keys the command line sets (they win)."""
    table = cfg.get("per_combiner")
    if not table:
        return
    if not hasattr(table, "keys"):
        raise MtbenchError(
            f"per_combiner must map combiner names to settings, e.g. per_combiner.mgda.trainer.lr=5e-4 (got {table!r})"
        )
    given = {text.split("=", 1)[0].lstrip("+~") for text in overrides}
    name = str(cfg.combiner.name)
    for combiner, settings in table.items():
        if not hasattr(settings, "keys") or not set(settings.keys()) <= {"trainer", "combiner"}:
            raise MtbenchError(f"per_combiner.{combiner} may set trainer.* and combiner.* keys only (got {settings!r})")
    settings = table.get(name)
    if not settings:
        return
    flat = OmegaConf.to_container(settings, resolve=True)
    assert isinstance(flat, dict)
    for group, values in flat.items():
        for key, value in (values or {}).items():
            dotted = f"{group}.{key}"
            if dotted not in given:
                with open_dict(cfg):
                    OmegaConf.update(cfg, dotted, value, force_add=True)


def check_job(cfg: DictConfig, overrides: list[str], raise_error: bool = False) -> str | None:
    """The one-line reason mtbench refuses the job whose composed config is ``cfg`` (its
    command-line ``overrides``), or None: what ``_app`` checks before it trains, done before
    Hydra creates the job's folder (a refused run writes nothing; a sweep checks every job
    before the first starts). ``raise_error``: the ``MtbenchError`` itself instead (its traceback,
    for ``HYDRA_FULL_ERROR=1``)."""
    cfg = cfg.copy()
    dropped, disabled = set(_DROPPED), log.disabled
    log.disabled = True  # the job itself logs what it drops, once
    try:
        _drop_inapplicable(cfg, overrides)
        _apply_per_combiner(cfg, overrides)
        identity(overrides, str(cfg.combiner.name))
        validate(cfg)
    except MtbenchError as e:
        if raise_error:
            raise
        return str(e)
    finally:
        log.disabled = disabled
        _DROPPED.clear()
        _DROPPED.update(dropped)
    return None

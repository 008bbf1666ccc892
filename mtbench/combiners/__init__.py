"""Gradient combiners: per-task losses -> parameter gradients. One combiner per file.

``build_combiner(cfg.combiner, num_tasks)`` instantiates the class named by the config's
``_target_`` (a dotted path: yours can live in any importable module) or, without one, the
built-in combiner of that ``name``.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, OmegaConf

from mtbench import MtbenchError
from mtbench.combiners.base import Combiner, Step
from mtbench.combiners.baseline import Baseline
from mtbench.combiners.clip import Clip
from mtbench.combiners.graddrop import GradDrop
from mtbench.combiners.gradnorm import GradNorm
from mtbench.combiners.gradnorm_graddrop import GradNormGradDrop
from mtbench.combiners.gradpenalty import GradPenalty
from mtbench.combiners.mgda import MGDA
from mtbench.combiners.pcgrad import PCGrad
from mtbench.combiners.random_graddrop import RandomGradDrop

#: the built-in combiners by config name, in the paper's order (the table's row order)
COMBINERS: dict[str, type[Combiner]] = {
    cls.name: cls
    for cls in (Baseline, Clip, GradPenalty, MGDA, PCGrad, GradNorm, RandomGradDrop, GradDrop, GradNormGradDrop)
}

__all__ = ["COMBINERS", "Combiner", "Step", "build_combiner"]


def _import(path: str) -> type[Combiner]:
    module, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise MtbenchError(f"combiner._target_={path!r} cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Combiner)):
        raise MtbenchError(f"combiner._target_={path!r} is not a subclass of mtbench.combiners.Combiner")
    return cls


def build_combiner(cfg: DictConfig, num_tasks: int) -> Combiner:
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    name = options.pop("name", None)
    target = options.pop("_target_", None)
    if target:
        cls = _import(str(target))
    elif name in COMBINERS:
        cls = COMBINERS[name]
    else:
        raise MtbenchError(f"combiner.name={name!r} is unknown; built-in combiners: {', '.join(COMBINERS)}")
    return cls(num_tasks, **options)

"""Gradient combiners: per-task losses -> parameter gradients. One combiner per file.

``build_combiner(cfg.combiner, num_tasks)`` instantiates the class named by the config's
``_target_`` (a dotted path: yours can live in any importable module) or, without one, the
built-in combiner of that ``name``.

:data:`COMBINERS` is the one registry of the built-in combiners: the sweeps (the resolver
``${mtbench_combiners:paper}`` in ``hydra.sweeper.params.combiner`` of the primary config,
``${mtbench_combiners:all}`` in ``experiment=zoo``), the table's row order, the plots' styles
(each class's ``style``) and ``scripts/bench_step.py`` read it. :data:`PAPER` names the paper's
comparison, the nine registered first: what ``mtbench -m`` sweeps with no argument.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from mtbench.combiners.aligned_mtl import AlignedMTL
from mtbench.combiners.base import Combiner, Step
from mtbench.combiners.baseline import Baseline
from mtbench.combiners.cagrad import CAGrad
from mtbench.combiners.clip import Clip
from mtbench.combiners.config import ConFIG
from mtbench.combiners.cr_mogm import CRMOGM
from mtbench.combiners.db_mtl import DBMTL
from mtbench.combiners.dualproj import DualProj
from mtbench.combiners.dwa import DWA
from mtbench.combiners.excess_mtl import ExcessMTL
from mtbench.combiners.fairgrad import FairGrad
from mtbench.combiners.famo import FAMO
from mtbench.combiners.gls import GLS
from mtbench.combiners.graddrop import GradDrop
from mtbench.combiners.gradnorm import GradNorm
from mtbench.combiners.gradnorm_graddrop import GradNormGradDrop
from mtbench.combiners.gradpenalty import GradPenalty
from mtbench.combiners.gradvac import GradVac
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.imtl import IMTL
from mtbench.combiners.imtl_g import IMTLG
from mtbench.combiners.imtl_l import IMTLL
from mtbench.combiners.mgda import MGDA
from mtbench.combiners.moco import MoCo
from mtbench.combiners.modo import MoDo
from mtbench.combiners.nash_mtl import NashMTL
from mtbench.combiners.pcd import PCD
from mtbench.combiners.pcgrad import PCGrad
from mtbench.combiners.random_graddrop import RandomGradDrop
from mtbench.combiners.rlw import RLW
from mtbench.combiners.sdmgrad import SDMGrad
from mtbench.combiners.si import SI
from mtbench.combiners.stch import STCH
from mtbench.combiners.upgrad import UPGrad
from mtbench.combiners.uw import UW
from mtbench.errors import MtbenchError
from mtbench.variant import register_resolver

#: the paper's comparison (its eight combiners and GradNorm+GradDrop), in the paper's order
_PAPER = (Baseline, Clip, GradPenalty, MGDA, PCGrad, GradNorm, RandomGradDrop, GradDrop, GradNormGradDrop)
#: the gradient-level methods of the Gram matrix
_GRAM = (UPGrad, CAGrad, NashMTL, IMTLG, AlignedMTL, DualProj, FairGrad, ConFIG, GradVac)
#: the loss-level combiners (one weight per task from the losses alone)
_LOSS = (UW, DWA, RLW, GLS, FAMO)
#: the gradient-level methods of 2022-2026 (PCD, CR-MOGM's smoothing of any Gram-weighted one;
#: Excess-MTL and DB-MTL at the shared parameters, with per-parameter statistics)
_GRAM2 = (PCD, CRMOGM, ExcessMTL, DBMTL)
#: the loss-level combiners of 2021-2024 (STCH, IMTL-L, SI) and the full IMTL
_LOSS2 = (STCH, IMTLL, SI, IMTL)
#: the methods of two independent mini-batches per step (J1 J2^T) and MoCo's tracked gradients
_TWO_BATCH = (SDMGrad, MoDo, MoCo)

#: the built-in combiners by config name: the paper's nine first (the table's row order, the
#: sweep's order), then the others; each class carries its options (``options``) and plot style
#: (``style``)
COMBINERS: dict[str, type[Combiner]] = {
    cls.name: cls for cls in (*_PAPER, *_GRAM, *_LOSS, *_GRAM2, *_LOSS2, *_TWO_BATCH)
}

#: the sweep of ``mtbench -m`` with no argument; every other registered combiner is swept by
#: ``experiment=zoo``
PAPER: tuple[str, ...] = tuple(cls.name for cls in _PAPER)

__all__ = ["COMBINERS", "PAPER", "Combiner", "GramWeighted", "Step", "build_combiner"]

#: the selections ``${mtbench_combiners:<which>}`` knows
SELECTIONS = ("paper", "all")


def resolve_combiners(which: str = "all") -> str:
    """OmegaConf resolver ``${mtbench_combiners:<which>}``: the combiners of a selection,
    comma-separated in the registry's order. ``paper`` (the primary config's sweep,
    ``mtbench -m``): :data:`PAPER`; ``all`` (also ``${mtbench_combiners:}``; ``experiment=zoo``):
    every registered combiner."""
    which = str(which or "all")
    if which == "paper":
        return ",".join(name for name in COMBINERS if name in PAPER)
    if which == "all":
        return ",".join(COMBINERS)
    raise MtbenchError(
        f"${{mtbench_combiners:{which}}} is not a selection of combiners; choose one of: {', '.join(SELECTIONS)}"
    )


register_resolver("mtbench_combiners", resolve_combiners)


def _import(path: str) -> type[Combiner]:
    module, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise MtbenchError(f"combiner._target_={path!r} cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Combiner)):
        raise MtbenchError(f"combiner._target_={path!r} is not a subclass of mtbench.combiners.Combiner")
    return cls


def _fill_leak(options: dict, default_leak) -> None:
    """``leak: null`` (anywhere in the options) takes the task's default leak, else 0."""
    for key, value in options.items():
        if key == "leak" and value is None:
            options[key] = list(default_leak) if default_leak is not None else 0.0
        elif isinstance(value, dict):
            _fill_leak(value, default_leak)


def _compose_pieces(options: dict) -> None:
    """A combiner config read without Hydra (``OmegaConf.load`` of a file whose defaults list
    composes other combiner files, ``- graddrop@graddrop``): each such piece is read from
    mtbench's combiner configs, under the options the file gives it."""
    from mtbench.variant import combiner_config, defaults_pieces

    for config, package in defaults_pieces(options.pop("defaults", None) or []):
        piece = combiner_config(config)
        if piece is None:
            raise MtbenchError(f"combiner defaults entry {config}@{package}: mtbench has no combiner config {config!r}")
        given = options.get(package) or {}
        options[package] = {**piece, **given}


def build_combiner(
    cfg: DictConfig, num_tasks: int, default_leak: list[float] | None = None, task_names: Sequence[str] | None = None
) -> Combiner:
    """The combiner of ``cfg`` for ``num_tasks`` tasks; ``default_leak`` (one per task, from the
    task's config) fills any ``leak: null`` option; ``task_names`` (where known) go to the
    combiner's :meth:`~Combiner.bind_tasks` (an option naming a task is checked there)."""
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    _compose_pieces(options)
    _fill_leak(options, default_leak)
    name = options.pop("name", None)
    target = options.pop("_target_", None)
    if target:
        cls = _import(str(target))
    elif name in COMBINERS:
        cls = COMBINERS[name]
    else:
        raise MtbenchError(f"combiner.name={name!r} is unknown; built-in combiners: {', '.join(COMBINERS)}")
    combiner = cls(num_tasks, **options)
    if task_names is not None:
        combiner.bind_tasks(list(task_names))
    return combiner

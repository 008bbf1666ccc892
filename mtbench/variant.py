"""A run's identity: the settings it was given on the command line.

A run lives in ``results/<name>/runs/<combiner>/<variant>/seed=<seed>/``. ``<variant>`` is
``default`` when the command line changes nothing but the combiner and the seed (presets and
task configs set their own defaults, so ``experiment=paper_celeba`` runs are ``default`` inside
``results/paper_celeba/``); otherwise it is the sorted ``key=value`` list of the identity
overrides, for example ``combiner.leak=0.5,trainer.lr=0.001``.

Keys that change where files go or how fast a run goes, not what it computes
(:data:`NON_IDENTITY`), are not part of the identity, and neither are the combiner, the seed,
the task and the preset (they have folders of their own). A combiner option given to a sweep of
several combiners belongs to the identity of the combiners that have that option only.

A key given on the command line is part of the variant even when its value equals the default
(``trainer.lr=0.003`` is its own variant): the identity is what was asked for, and the run's
``metrics.json`` keeps the whole resolved config beside it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

#: keys (and key prefixes) that never enter the identity: where files go, how fast a run goes,
#: and the choices that already have their own folder level (name, combiner, seed)
NON_IDENTITY = (
    "name",
    "results_dir",
    "force",
    "seed",
    "combiner",  # the group choice; combiner.<option> keys are identity
    "task",  # the group choice (a task config sets `name`); task.<option> keys are identity
    "experiment",
    "logger",  # where a run reports to, not what it computes
    "debug",  # the debug= presets write under their own results folder
    "data.root",
    "data.cache_dir",
    "data.workers",
    "data.download",
    "trainer.progress",
    "trainer.diagnostics",  # what a run logs, not what it computes
    "trainer.num_threads",
    "trainer.retain_freed_memory",
    "trainer.eval_batch_size",
    "trainer.save_model",  # what a run keeps, not what it computes
    "trainer.profile_steps",
    "trainer.strategy",  # several processes compute the single-process run's numbers
    "trainer.devices",
    "trainer.collective_timeout_s",
    "hydra",
)

#: a variant longer than this is cut and given a hash of the whole name instead of its tail
MAX_LENGTH = 100

DEFAULT = "default"

_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+\-\[\]:@]")


def _group_choice_keys() -> set[str]:
    return {"combiner", "task", "experiment"}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}`` (a saved config, for identities, diffs and the loggers' params)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def is_identity_key(key: str) -> bool:
    """Whether an override of ``key`` (``trainer.lr``, ``model``, ``combiner.leak``) enters the identity."""
    key = key.lstrip("+~")
    for prefix in NON_IDENTITY:
        if key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "/"):
            if prefix in _group_choice_keys() and key != prefix:
                return True  # combiner.leak, task.n_train: options, not the choice
            return False
    return True


def format_value(value: Any) -> str:
    """A canonical text of an override's value: ``1e-3`` and ``0.001`` read the same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def defaults_pieces(defaults: Iterable[Any]) -> list[tuple[str, str]]:
    """``(config, package)`` of the ``config@package`` entries of a combiner file's defaults
    list (``- graddrop@graddrop``: GradDrop's own file under the key ``graddrop``)."""
    out = []
    for entry in defaults:
        if isinstance(entry, str) and "@" in entry and not entry.startswith("_"):
            config, _, package = entry.partition("@")
            out.append((config.strip(), package.strip()))
    return out


@cache
def _combiner_file(name: str) -> dict | None:
    try:
        text = (resources.files("mtbench.configs") / "combiner" / f"{name}.yaml").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError, ModuleNotFoundError):
        return None
    import yaml

    return yaml.safe_load(text) or {}


def combiner_config(name: str) -> dict | None:
    """The keys and values of mtbench's ``combiner/<name>.yaml`` as Hydra composes them (the
    pieces of its defaults list under their keys; no ``defaults``); None without such a file."""
    data = _combiner_file(name)
    if data is None:
        return None
    data = dict(data)
    out: dict = {}
    for config, package in defaults_pieces(data.pop("defaults", None) or []):
        out[package] = combiner_config(config) or {}
    for key, value in data.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


@cache
def combiner_options(name: str) -> frozenset[str] | None:
    """The options ``combiner=<name>`` declares (the keys of its composed config file, ``name``
    aside); None for a combiner without a config file of mtbench's."""
    data = combiner_config(name)
    if data is None:
        return None
    return frozenset(k for k in data if k not in ("name", "defaults"))


def named_classes(keys: Iterable[str]) -> set[str]:
    """The groups (``combiner``, ``model``) whose ``_target_`` the given override keys set: the
    class or builder named there checks its own options, so mtbench passes them on unchecked."""
    given = {k.split("=", 1)[0].lstrip("+") for k in keys}
    return {g for g in ("combiner", "model") if f"{g}._target_" in given}


def applies(key: str, combiner: str) -> bool:
    """Whether the override key ``key`` applies to ``combiner`` (only ``combiner.<option>`` keys
    may not: an option the combiner does not declare)."""
    key = key.lstrip("+~")
    if key.startswith("per_combiner."):  # per_combiner.<name>.*: the runs of that combiner only
        return key.split(".")[1] == combiner if key.count(".") > 1 else True
    if not key.startswith("combiner."):
        return True
    options = combiner_options(combiner)
    return options is None or key.split(".")[1] in options


def parse(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, canonical value)`` of each override (Hydra's own parser), in the given order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    out = []
    for o in parsed:
        key = o.key_or_group if o.package is None else f"{o.key_or_group}@{o.package}"
        if o.is_delete():
            out.append(("~" + key, ""))
        else:
            out.append((key, format_value(o.value())))
    return out


def identity(overrides: Iterable[str], combiner: str) -> dict[str, str]:
    """The identity overrides of a job, sorted by key: ``{key: canonical value}``."""
    out = {}
    pairs = parse(overrides)
    # a class given on the command line (combiner._target_) decides its own options
    custom = "combiner" in named_classes(key for key, _ in pairs)
    for key, value in pairs:
        bare = key.lstrip("+")
        if is_identity_key(bare) and (custom or applies(bare, combiner)):
            out[bare] = value
    return dict(sorted(out.items()))


def variant_name(ident: dict[str, str]) -> str:
    """The folder name of an identity: ``default``, or ``k=v,k=v`` (filesystem-safe, at most
    about :data:`MAX_LENGTH` characters: longer names keep their head and end in a hash)."""
    if not ident:
        return DEFAULT
    full = ",".join(f"{k}={v}" if not k.startswith("~") else k for k, v in ident.items())
    safe = _UNSAFE.sub("_", full)
    if safe == full and len(full) <= MAX_LENGTH:
        return full
    digest = hashlib.sha1(full.encode("utf-8")).hexdigest()[:8]
    parts = safe.split(",")
    kept: list[str] = []
    for part in parts:  # whole key=value pairs, then how many were left out and the hash
        if len(",".join(kept + [part])) > MAX_LENGTH - 16:
            break
        kept.append(part)
    head = ",".join(kept) if kept else safe[: MAX_LENGTH - 16]
    rest = len(parts) - len(kept)
    return f"{head},+{rest}-{digest}" if kept and rest else f"{head}-{digest}"


def resolve_variant(overrides: Any, combiner: Any) -> str:
    """OmegaConf resolver ``${mtbench_variant:${hydra.overrides.task},${combiner.name}}``."""
    return variant_name(identity(list(overrides or []), str(combiner)))


def register_resolver(name: str = "mtbench_variant", resolver: Any = None) -> None:
    """Register an OmegaConf resolver once (default: ``mtbench_variant``); the registry of
    combiners registers ``mtbench_combiners`` (``mtbench.combiners``, and lazily ``mtbench.cli``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver or resolve_variant)


register_resolver()  # wherever mtbench's configs are composed (the cli, the override checks, a script)

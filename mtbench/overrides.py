"""The command line's overrides, checked before Hydra composes anything.

- A config-group choice that does not exist (``combiner=gradrop``, ``experiment=paper_celeb``)
  and a key that no part of mtbench reads (``trainer.epocs=2``, ``+trainer.epocs=2``) are refused
  in one line that names the closest valid name.
- A combiner option given to a sweep of several combiners (``combiner=baseline,graddrop
  combiner.leak=0.5``) applies to the combiners that have the option: it is passed on as
  ``++combiner.<option>`` and each job of a combiner without it drops it (``cli``), so that
  combiner runs unchanged. An option that none of the swept combiners has is refused.
- ``combiner._target_=my.module.MyCombiner`` (with or without ``+``) swaps in your class: the
  other ``combiner.<option>`` keys then pass to it unchecked (its constructor checks them); the
  same for ``model._target_=my.module.build`` and the ``model.<option>`` keys.
- Keys inside an options dict that is empty by default (``+trainer.optimizer_options.betas=...``,
  ``+trainer.scheduler_options.gamma=0.95``) pass: the class they are given to checks them.
- With ``hydra/sweeper=optuna`` the sweeper's direction follows the selected validation metric
  (error rates are minimised) unless ``hydra.sweeper.direction`` is given.
"""

from __future__ import annotations

import difflib
import itertools
from importlib import resources
from pathlib import Path
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.variant import combiner_options, named_classes

#: mtbench's own config groups (Hydra's ``hydra/...`` groups are Hydra's business)
GROUPS = ("combiner", "task", "model", "trainer", "experiment", "logger", "debug")


def choices(group: str, searchpath: list[str] | None = None) -> list[str] | None:
    """The config files of a group (``combiner`` -> ``baseline``, ``clip``, ...), mtbench's own
    and those of the ``hydra.searchpath`` folders; None when a search path cannot be listed
    here (a ``pkg://`` one of another package: Hydra checks the choice itself)."""
    folders: list[Any] = []
    try:
        folders.append(resources.files("mtbench.configs") / group)
    except (FileNotFoundError, OSError, ModuleNotFoundError):
        return None
    for entry in searchpath or []:
        if entry.startswith("file://"):
            folders.append(Path(entry[len("file://") :]) / group)
        elif entry.startswith("pkg://mtbench.configs"):
            continue
        else:
            return None
    found: set[str] = set()
    for folder in folders:
        try:
            found.update(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        except (FileNotFoundError, NotADirectoryError, OSError):
            continue
    return sorted(found)


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def _values(o: Any) -> list[str]:
    if o.is_sweep_override():
        try:
            return [str(v) for v in o.sweep_string_iterator()]
        except Exception:  # noqa: BLE001 - a range/interval sweep of a group: nothing to check
            return []
    value = o.value()
    if isinstance(value, list):  # several configs of one group at once: logger=[tensorboard,mlflow]
        return [str(v) for v in value]
    return [o.get_value_element_as_str()]


def _keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}{k}"
            out.append(key)
            try:
                child = node._get_node(k)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(child, DictConfig):
                out.extend(_keys(child, key + "."))
    return out


def _compose(group_choices: dict[str, list[str]], extra: list[str] | None = None) -> list[Any]:
    """The primary config composed with each combination of the task/experiment choices
    (the other groups at their first choice); empty when composition fails (Hydra reports it)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    fixed = list(extra or []) + [
        f"{g}={v[0]}" for g, v in group_choices.items() if g not in ("task", "experiment") and v
    ]
    varying = [[f"{g}={x}" for x in group_choices[g]] for g in ("task", "experiment") if group_choices.get(g)]
    configs = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            for combo in itertools.product(*varying) if varying else [()]:
                configs.append(compose(config_name="config", overrides=fixed + list(combo), return_hydra_config=True))
    except Exception:  # noqa: BLE001 - let Hydra itself report what it cannot compose
        return []
    finally:
        GlobalHydra.instance().clear()
    return configs


def check(overrides: list[str], multirun: bool, config_dirs: list[str] | None = None) -> list[str]:
    """Check the overrides (one-line ``MtbenchError`` naming the fix) and return them as Hydra
    should get them. ``config_dirs``: the command line's ``--config-dir`` folders (searched for
    config groups like ``hydra.searchpath`` entries)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = [expand_home(text) for text in overrides]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        raise MtbenchError(_syntax_error(overrides)) from None
    group_choices: dict[str, list[str]] = {}
    keyed = []
    searchpath: list[str] = [f"file://{Path(d).resolve()}" for d in config_dirs or []]
    for o in parsed:
        if o.key_or_group == "hydra.searchpath" and not o.is_sweep_override():
            value = o.value()
            searchpath += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    # how configs are found: composed with the rest
    hydra_keep = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    for text, o in zip(overrides, parsed):
        key = o.key_or_group
        if key in GROUPS and o.package is None:
            values = _values(o)
            valid = choices(key, searchpath)
            for v in values:
                if valid and v not in valid and not (key in ("experiment", "debug") and v == "null"):
                    raise MtbenchError(
                        f"{key}={v}: Could not find '{key}/{v}'; {_suggest(f'{key}={v}', [f'{key}={c}' for c in valid])}"
                        f"Available options in '{key}': {', '.join(valid)}"
                    )
            group_choices[key] = values
        elif not key.startswith("hydra") and not o.is_delete():
            keyed.append((text, o))
    _check_hydra_plugins(parsed, searchpath, hydra_keep)
    out = list(overrides)
    configs = (
        _compose(group_choices, hydra_keep) if keyed or any(o.key_or_group == "hydra/sweeper" for o in parsed) else []
    )
    if keyed and configs:
        known = sorted(set(itertools.chain.from_iterable(_keys(c) for c in configs)) - {"hydra"})
        known = [k for k in known if not k.startswith("hydra.")]
        combiners = group_choices.get("combiner") or _default_combiners(configs, multirun)
        # a class or builder given on the command line (``_target_``) checks its own options
        custom = named_classes(o.key_or_group for _, o in keyed)
        open_dicts = _open_dicts(configs)
        for text, o in keyed:
            key = o.key_or_group
            group = key.split(".")[0]
            if group in custom and key.startswith(group + "."):
                out[out.index(text)] = "++" + text.lstrip("+")
            elif key.startswith("combiner."):
                out[out.index(text)] = _combiner_key(text, o, key, combiners)
            elif any(key.startswith(d + ".") for d in open_dicts):
                continue  # a key inside an options dict that is empty by default (trainer.optimizer_options.*)
            elif key not in known and not key.startswith("per_combiner."):  # per_combiner.<c>.*: checked by the job
                hint = _suggest(key, known)
                if o.input_line.startswith("+"):
                    raise MtbenchError(
                        f"{o.input_line.split('=')[0]}: no part of mtbench reads {key}; {hint.strip() or 'see mtbench --cfg job for the keys'}"
                    )
                raise MtbenchError(
                    f"{key} is not an option of mtbench; {hint.strip() or 'see mtbench --cfg job for the keys'}"
                )
    sweeper = next((o for o in parsed if o.key_or_group == "hydra/sweeper"), None)
    if (
        sweeper is not None
        and "optuna" in _values(sweeper)
        and not any(o.key_or_group == "hydra.sweeper.direction" for o in parsed)
    ):
        out.append(f"hydra.sweeper.direction={_direction(configs, overrides, parsed)}")
    return out


#: Hydra's plugin groups mtbench's command line checks, and the package each known choice needs
PLUGINS = {
    "hydra/launcher": {
        "joblib": "hydra-joblib-launcher",
        "submitit_local": "hydra-submitit-launcher",
        "submitit_slurm": "hydra-submitit-launcher",
        "slurm": "hydra-submitit-launcher",
        "ray": "hydra-ray-launcher",
        "rq": "hydra-rq-launcher",
    },
    "hydra/sweeper": {
        "optuna": 'the [optuna] extra: pip install -e ".[optuna]" (or pip install hydra-optuna-sweeper)',
        "ax": "hydra-ax-sweeper",
        "nevergrad": "hydra-nevergrad-sweeper",
    },
}

#: the launchers that submit to SLURM (``sbatch`` must be on PATH)
SLURM_LAUNCHERS = ("slurm", "submitit_slurm")


def hydra_choices(group: str, searchpath: list[str] | None = None) -> list[str]:
    """The choices Hydra finds for one of its plugin groups (``hydra/launcher``), from the
    installed plugins and mtbench's configs."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            found = set(GlobalHydra.instance().config_loader().get_group_options(group))
    finally:
        GlobalHydra.instance().clear()
    for entry in searchpath or []:
        if entry.startswith("file://"):
            folder = Path(entry[len("file://") :]) / group
            if folder.is_dir():
                found.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(found)


def _check_hydra_plugins(parsed: list[Any], searchpath: list[str], hydra_keep: list[str]) -> None:
    """``hydra/launcher=...`` and ``hydra/sweeper=...``: a choice that does not exist (did you
    mean, or the package to install), SLURM off a cluster, and a ``hydra.launcher.<key>`` /
    ``hydra.sweeper.<key>`` that the chosen plugin does not have."""
    import shutil

    chosen: dict[str, str] = {}
    for o in parsed:
        group = o.key_or_group
        if group not in PLUGINS or o.package is not None:
            continue
        valid = hydra_choices(group, searchpath)
        for v in _values(o):
            if v in valid:
                chosen[group] = v
                continue
            need = PLUGINS[group].get(v)
            if need:
                how = need if need.startswith("the ") else f"the {need} package: pip install {need}"
                raise MtbenchError(f"{group}={v} needs {how}")
            raise MtbenchError(
                f"{group}={v}: no such {group.split('/')[1]}; {_suggest(v, valid)}available: {', '.join(valid)}"
            )
    launcher = chosen.get("hydra/launcher")
    if launcher in SLURM_LAUNCHERS and shutil.which("sbatch") is None:
        raise MtbenchError(
            f"hydra/launcher={launcher} submits each run with SLURM's sbatch, which is not on this machine's PATH; "
            "run the command on the cluster's login node, or drop hydra/launcher to run here"
        )
    keyed = [
        o
        for o in parsed
        if o.key_or_group.split(".")[:2] in (["hydra", "launcher"], ["hydra", "sweeper"])
        and len(o.key_or_group.split(".")) > 2
        and not o.is_delete()
    ]
    if not keyed:
        return
    extra = [f"{g}={v}" for g, v in chosen.items()] + hydra_keep
    configs = _compose({}, extra)
    if not configs:
        return
    hydra_cfg = configs[0].hydra
    for o in keyed:
        _, part, option = o.key_or_group.split(".")[:3]
        node = hydra_cfg.get(part)
        if node is None or option in node or option == "params":
            continue
        name = chosen.get(f"hydra/{part}") or str(hydra_cfg.runtime.choices.get(f"hydra/{part}", ""))
        close = difflib.get_close_matches(option, [str(k) for k in node.keys()], n=1, cutoff=0.6)
        hint = (
            f"did you mean hydra.{part}.{close[0]}?"
            if close
            else f"its keys are {', '.join(str(k) for k in node.keys())}"
        )
        raise MtbenchError(f"{o.key_or_group} is not an option of hydra/{part}={name}; {hint}")


def expand_home(text: str) -> str:
    """``key=~/path`` (and ``key=~``) with ``~`` expanded to the home folder and the value quoted
    for Hydra: a shell expands ``~`` only at the start of a word, and Hydra's grammar rejects it."""
    key, sep, value = text.partition("=")
    if not sep or not (value == "~" or value.startswith("~/")):
        return text
    path = str(Path(value).expanduser())
    if "'" in path or "\\" in path:
        return text  # left to _syntax_error's advice
    return f"{key}='{path}'"


def _syntax_error(overrides: list[str]) -> str:
    """The one-line message for the first override Hydra's grammar rejects."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for text in overrides:
        try:
            OverridesParser.create().parse_overrides([text])
        except HydraException:
            key, sep, value = text.partition("=")
            if not sep:
                return f"{text}: not an override; write key=value (e.g. trainer.epochs=2)"
            quoted = value.replace("'", "\\'")
            return (
                f"{text}: Hydra's override grammar rejects a character in this value; quote it for Hydra "
                f"inside the shell's quotes: \"{key}='{quoted}'\""
            )
    return "Hydra cannot parse the overrides; quote values that hold special characters: \"key='value'\""


def _open_dicts(configs: list[Any]) -> set[str]:
    """The keys whose value is an empty dict in every composed config (options passed on to a
    class the user names, such as ``trainer.optimizer_options``): any key may go inside."""
    from omegaconf import DictConfig, OmegaConf

    found: set[str] | None = None
    for cfg in configs:
        keys = set()
        for key in _keys(cfg):
            if key.startswith("hydra"):
                continue
            node = OmegaConf.select(cfg, key, throw_on_missing=False, throw_on_resolution_failure=False)
            if isinstance(node, DictConfig) and len(node) == 0:
                keys.add(key)
        found = keys if found is None else found & keys
    return found or set()


def _default_combiners(configs: list[Any], multirun: bool) -> list[str]:
    names: list[str] = []
    for cfg in configs:
        swept = cfg.hydra.sweeper.get("params", None) if multirun else None
        if swept and swept.get("combiner"):
            names += [c.strip() for c in str(swept["combiner"]).split(",")]
        else:
            names.append(str(cfg.combiner.name))
    return list(dict.fromkeys(names))


def _combiner_key(text: str, o: Any, key: str, combiners: list[str]) -> str:
    option = key.split(".")[1]
    declared = {c: combiner_options(c) for c in combiners}
    having = [c for c, opts in declared.items() if opts is None or option in opts]
    if not having:
        everything = sorted(set().union(*[opts for opts in declared.values() if opts]))
        names = [f"combiner.{x}" for x in everything]
        close = difflib.get_close_matches(option, everything, n=1, cutoff=0.6)
        hint = f"did you mean combiner.{close[0]}? " if close else ""
        which = (
            f"combiner={combiners[0]}"
            if len(combiners) == 1
            else f"any of the combiners swept ({', '.join(combiners)})"
        )
        listed = f"its options are {', '.join(names)}" if names else "it has no options"
        raise MtbenchError(f"{key} is not an option of {which}; {hint}{listed}")
    if len(having) < len(combiners) and not text.startswith("+"):
        return "++" + text
    return text


def _direction(configs: list[Any], overrides: list[str], parsed: list[Any]) -> str:
    """``minimize`` unless the selected validation metric is one where higher is better."""
    from mtbench.data import metric_columns

    select = None
    for o in parsed:
        if o.key_or_group == "trainer.select_metric" and not o.is_sweep_override():
            select = o.value()
    task = str(configs[0].task.name) if configs else "shapes40"
    if select is None and configs:
        select = configs[0].trainer.get("select_metric")
    columns = metric_columns(task)
    if not columns:
        return "minimize"
    column = next((c for c in columns if c.key == select), columns[0])
    return "maximize" if column.higher_is_better else "minimize"

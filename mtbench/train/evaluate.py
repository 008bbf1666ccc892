"""``mtbench-eval``: re-evaluate a completed run's saved model (``model.pt``) on a split.

    mtbench-eval results/shapes40/runs/baseline/default/seed=0               # the test split
    mtbench-eval results/shapes40/runs/baseline/default/seed=0 --split val

The run's task and model are rebuilt from the resolved config in its ``metrics.json`` exactly as
the trainer builds them, the weights of ``model.pt`` loaded (``trainer.save_model``: the
best-validation epoch's by default), and the task's metrics printed. On a CPU they are identical
to the run's ``metrics.json`` (``test``, or ``val`` of the selected epoch, for a model saved with
``trainer.save_model=best``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mtbench.errors import MtbenchError
from mtbench.train.saved_model import MODEL, read_model

METRICS = "metrics.json"


def read_record(path: Path, run_dir: Path) -> dict[str, Any]:
    """A run's ``metrics.json``: a JSON object, or a one-line error naming the file."""
    if not path.is_file():
        raise MtbenchError(
            f"{run_dir} has no {METRICS}; give a run folder such as results/shapes40/runs/baseline/default/seed=0"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else f"{type(e).__name__}: {str(e)[:120]}"
        raise MtbenchError(f"{path} is not a readable metrics file ({why}); re-run the run with force=true") from None
    if not isinstance(record, dict):
        raise MtbenchError(
            f"{path} holds a JSON {type(record).__name__}, not a run's record; re-run the run with force=true"
        )
    return record


def _targets(node: Any, prefix: str) -> list[str]:
    """The ``<key>._target_`` entries anywhere under ``node`` (a config read from a file)."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k == "_target_":
                found.append(f"{key}={v!r}")
            found += _targets(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _targets(v, f"{prefix}[{i}]")
    return found


def saved_config(record: dict[str, Any], path: Path, model_target: str | None = None) -> Any:
    """The run's resolved config from its record, checked so that it names no code: its task
    and model must be registered ones (a ``_target_`` read from a file is refused; only
    ``--model-target`` on the command line may name a model builder). A pretrained-weights
    entry is dropped (``model.pt`` holds every weight)."""
    from omegaconf import OmegaConf

    from mtbench.data import TASKS
    from mtbench.models import MODELS

    config = record.get("config")
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("task"), dict)
        or not isinstance(config.get("model"), dict)
    ):
        raise MtbenchError(f"{path} holds no run config (config.task, config.model); re-run the run with force=true")
    named = _targets(config.get("task"), "task") + _targets(config.get("model"), "model")
    if named and not (model_target and all(n.startswith("model._target_=") for n in named)):
        raise MtbenchError(
            f"{path} names code to build ({named[0]}); mtbench-eval builds registered models only and never code "
            f"a file names: to evaluate a model of your own, give its builder on the command line (--model-target my.module.build)"
        )
    model = dict(config["model"])
    if model_target:
        model["_target_"] = model_target
    elif model.get("name") not in MODELS:
        raise MtbenchError(
            f"{path}: model.name={model.get('name')!r} is not a registered model ({', '.join(MODELS)}); "
            f"for a model of your own give --model-target my.module.build"
        )
    if config["task"].get("name") not in TASKS:
        raise MtbenchError(
            f"{path}: task.name={config['task'].get('name')!r} is not a registered task ({', '.join(TASKS)})"
        )
    model.pop("weights", None)  # model.pt overwrites every weight: no file or download named by the folder
    try:
        return OmegaConf.create({**config, "model": model})
    except Exception as e:  # noqa: BLE001 - OmegaConf raises several types for a malformed config
        raise MtbenchError(
            f"{path} holds a malformed config ({type(e).__name__}); re-run the run with force=true"
        ) from None


def evaluate_run(
    run_dir: Path | str,
    split: str = "test",
    device: str = "cpu",
    batch_size: int | None = None,
    model_target: str | None = None,
) -> dict[str, Any]:
    """The task's metrics of ``run_dir``'s saved model on ``split`` (``test`` | ``val`` | ``train``):
    ``{"metrics": {key: value}, "columns": [(key, header, higher)], "which", "epoch"}``.
    ``model_target``: the builder of a model of the user's own (``model._target_``), given on
    the command line; the saved config may not name one itself."""
    import torch

    from mtbench.data import build_task
    from mtbench.models import build_model
    from mtbench.train.batches import Preprocess, evaluate
    from mtbench.train.device import resolve_device
    from mtbench.train.rng import forked_global_rng

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MtbenchError(
            f"{run_dir} is not a folder; give a run folder such as results/shapes40/runs/baseline/default/seed=0"
        )
    if split not in ("test", "val", "train"):
        raise MtbenchError(f"--split {split} is not a split; choose test, val or train")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise MtbenchError(f"--batch-size {batch_size} is not a batch size; give an integer >= 1 (or leave it out)")
    metrics_path, model_path = run_dir / METRICS, run_dir / MODEL
    record = read_record(metrics_path, run_dir)
    if not model_path.is_file():
        why = (
            "the run is not completed" if record.get("status") != "completed" else "it ran with trainer.save_model=none"
        )
        raise MtbenchError(
            f"{run_dir} has no {MODEL} ({why}); re-run it with trainer.save_model=best (and force=true if it is completed)"
        )
    cfg = saved_config(record, metrics_path, model_target)
    dev = resolve_device(device)
    saved = read_model(model_path)
    with forked_global_rng(0, "task build"):  # as the trainer builds it
        task = build_task(cfg.task)
        task.setup(dev)
    model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(dev)
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise MtbenchError(
            f"{model_path} does not fit the run's model ({type(e).__name__}: {str(e).splitlines()[0]}); re-run the run with force=true"
        ) from None
    size = batch_size or (cfg.get("trainer") or {}).get("eval_batch_size", 512)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MtbenchError(
            f"{metrics_path}: trainer.eval_batch_size={size!r} is not a batch size; give --batch-size N (N >= 1)"
        )
    with torch.no_grad():
        values = evaluate(model, task, getattr(task, split), Preprocess(task, dev), size)
    columns = [(c.key, c.header, c.higher_is_better) for c in task.metric_columns]
    return {
        "metrics": {k: values[k] for k, _, _ in columns},
        "columns": columns,
        "which": saved.get("which"),
        "epoch": saved.get("epoch"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtbench-eval", description="Re-evaluate a completed run's saved model (model.pt) on a split."
    )
    parser.add_argument("run_dir", type=Path, help="a run folder: results/<name>/runs/<combiner>/<variant>/seed=<s>")
    parser.add_argument(
        "--split", choices=("test", "val", "train"), default="test", help="the split to evaluate (default: test)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default; the numbers of metrics.json), cuda or cuda:N")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="evaluation batch (default: the run's trainer.eval_batch_size)"
    )
    parser.add_argument(
        "--model-target",
        default=None,
        help="the builder of a model of your own (model._target_, e.g. my.module.build): a run folder's files never name code",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = parser.parse_args(argv)
    try:
        out = evaluate_run(args.run_dir, args.split, args.device, args.batch_size, args.model_target)
    except MtbenchError as e:
        print(f"mtbench: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out["metrics"]))
    else:
        shown = "  ".join(f"{args.split} {header} {out['metrics'][key]:.4f}" for key, header, _ in out["columns"])
        print(f"{args.run_dir} ({out['which']} model, epoch {out['epoch']}): {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

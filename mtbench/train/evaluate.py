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

METRICS = "metrics.json"


def evaluate_run(
    run_dir: Path | str, split: str = "test", device: str = "cpu", batch_size: int | None = None
) -> dict[str, Any]:
    """The task's metrics of ``run_dir``'s saved model on ``split`` (``test`` | ``val`` | ``train``):
    ``{"metrics": {key: value}, "columns": [(key, header, higher)], "which", "epoch"}``."""
    import torch
    from omegaconf import OmegaConf

    from mtbench.data import build_task
    from mtbench.models import build_model
    from mtbench.train import checkpoint as checkpoint_file
    from mtbench.train.batches import Preprocess, evaluate
    from mtbench.train.device import resolve_device
    from mtbench.train.loop import MODEL
    from mtbench.train.rng import forked_global_rng

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MtbenchError(
            f"{run_dir} is not a folder; give a run folder such as results/shapes40/runs/baseline/default/seed=0"
        )
    metrics_path, model_path = run_dir / METRICS, run_dir / MODEL
    if not metrics_path.is_file():
        raise MtbenchError(
            f"{run_dir} has no {METRICS}; give a run folder such as results/shapes40/runs/baseline/default/seed=0"
        )
    record = json.loads(metrics_path.read_text(encoding="utf-8"))
    if not model_path.is_file():
        why = (
            "the run is not completed" if record.get("status") != "completed" else "it ran with trainer.save_model=none"
        )
        raise MtbenchError(
            f"{run_dir} has no {MODEL} ({why}); re-run it with trainer.save_model=best (and force=true if it is completed)"
        )
    cfg = OmegaConf.create(record["config"])
    dev = resolve_device(device)
    with forked_global_rng(0, "task build"):  # as the trainer builds it
        task = build_task(cfg.task)
        task.setup(dev)
    if split not in ("test", "val", "train"):
        raise MtbenchError(f"--split {split} is not a split; choose test, val or train")
    model = build_model(cfg.model, in_channels=task.in_channels, task=task).to(dev)
    saved = checkpoint_file.load(model_path)
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise MtbenchError(
            f"{model_path} does not fit the run's model ({type(e).__name__}: {str(e).splitlines()[0]}); re-run the run with force=true"
        ) from None
    size = int(batch_size or cfg.trainer.get("eval_batch_size", 512))
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
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = parser.parse_args(argv)
    try:
        out = evaluate_run(args.run_dir, args.split, args.device, args.batch_size)
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

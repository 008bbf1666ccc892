"""``trainer.early_stopping.patience``: when a run stops before ``trainer.epochs``, decided from
the history and the best epoch (so a resumed run decides the same), and its ``metrics.json`` record."""

from __future__ import annotations

from typing import Any

from mtbench.train.state import RunState

__all__ = ["early_stopping_record", "patience", "stopped_early"]


def patience(tcfg: Any) -> int | None:
    """``trainer.early_stopping.patience`` (None: no early stopping)."""
    value = (tcfg.get("early_stopping") or {}).get("patience")
    return int(value) if value is not None else None


def stopped_early(tcfg: Any, state: RunState) -> bool:
    """``trainer.early_stopping.patience`` epochs in a row without a better selection metric than
    the best epoch's (from the history and the best epoch, so a resumed run decides the same)."""
    wait = patience(tcfg)
    if wait is None or state.best is None or not state.history:
        return False
    return int(state.history[-1]["epoch"]) - int(state.best["epoch"]) >= wait


def early_stopping_record(tcfg: Any, state: RunState, metric: str, epochs: int) -> dict[str, Any]:
    """metrics.json's ``early_stopping``: the patience, the metric it watched, and the last epoch
    trained when the run stopped before ``trainer.epochs`` (else null)."""
    last = int(state.history[-1]["epoch"]) if state.history else 0
    return {
        "patience": patience(tcfg),
        "metric": metric,
        "stopped_at_epoch": last if stopped_early(tcfg, state) and last < epochs else None,
    }

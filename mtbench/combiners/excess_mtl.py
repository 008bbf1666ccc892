"""Excess-MTL: task weights raised by each task's estimated excess risk (exponentiated gradient)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.linalg import combine
from mtbench.combiners.paramrows import ParamRows, tensor_or_none
from mtbench.combiners.rows import _check_grads, _check_option
from mtbench.options import Option, integer, number

EXCESS_MTL_STEP_SIZE = 1.0
#: added under the square root of the accumulated squares and to the baseline excess risk
EXCESS_MTL_EPS = 1e-7


def excess_mtl_state(
    grads: Tensor,
    state: dict[str, Any] | None = None,
    robust_step_size: float = EXCESS_MTL_STEP_SIZE,
    n_warmup_steps: int = 0,
) -> tuple[Tensor, dict[str, Any]]:
    """One step of Excess-MTL (He et al., ICML 2024) on the per-task gradients ``grads`` [T, D]:
    ``(weights, state)``, the weights T times torchjd's ``ExcessMTLWeighting(robust_step_size,
    n_warmup_steps)`` (float64, summing to T).

    The state (None at the first step) holds ``sq_sum`` [T, D], the accumulated squared
    gradients (AdaGrad's diagonal Hessian estimate, in ``grads``'s dtype), ``log_weights`` [T]
    (log of the simplex weights, starting uniform), ``baseline`` [T] (None until set),
    ``warmup_sum`` [T] and ``steps``. Each step: S += g^2, the excess risk e_i = sum_d g_id^2 /
    sqrt(S_id + 1e-7); during the first ``n_warmup_steps`` the weights stay uniform and e is
    summed; then the baseline is the warm-up's mean e (or, without warm-up, the first step's e,
    used raw at that step) and e_i / (baseline_i + 1e-7) drives the update
    w <- softmax(log w + robust_step_size e).
    """
    _check_grads(grads, "excess_mtl")
    _check_option("excess_mtl", "robust_step_size", robust_step_size, robust_step_size > 0, "a positive number")
    _check_option(
        "excess_mtl", "n_warmup_steps", n_warmup_steps, isinstance(n_warmup_steps, int) and n_warmup_steps >= 0, ">= 0"
    )
    rows = grads.detach().reshape(grads.shape[0], math.prod(grads.shape[1:]))
    T = rows.shape[0]
    if state is None or state.get("sq_sum") is None or tuple(state["sq_sum"].shape) != tuple(rows.shape):
        state = {
            "sq_sum": torch.zeros_like(rows),
            "log_weights": torch.full((T,), -math.log(max(T, 1)), dtype=torch.float64),
            "baseline": None,
            "warmup_sum": torch.zeros(T, dtype=torch.float64),
            "steps": 0,
        }
    else:
        state = dict(state)
    squares = rows * rows
    sq_sum = state["sq_sum"].to(device=rows.device, dtype=rows.dtype).add_(squares)
    state["sq_sum"] = sq_sum
    excess = (squares / torch.sqrt(sq_sum + EXCESS_MTL_EPS)).sum(dim=1, dtype=torch.float64).cpu()
    log_w = torch.as_tensor(state["log_weights"], dtype=torch.float64)
    steps = int(state["steps"])
    state["steps"] = steps + 1
    if steps < n_warmup_steps:
        state["warmup_sum"] = torch.as_tensor(state["warmup_sum"], dtype=torch.float64) + excess
        return T * torch.exp(log_w), state
    if state["baseline"] is None:
        if n_warmup_steps > 0:
            state["baseline"] = torch.as_tensor(state["warmup_sum"], dtype=torch.float64) / n_warmup_steps
            excess = excess / (state["baseline"] + EXCESS_MTL_EPS)
        else:
            state["baseline"] = excess.clone()  # the first step's excess risk, used raw at this step
    else:
        excess = excess / (torch.as_tensor(state["baseline"], dtype=torch.float64) + EXCESS_MTL_EPS)
    log_w = torch.log_softmax(log_w + robust_step_size * excess, dim=0)
    state["log_weights"] = log_w
    return T * torch.exp(log_w), state


def excess_mtl(grads: Tensor, robust_step_size: float = EXCESS_MTL_STEP_SIZE) -> Tensor:
    """Excess-MTL's first step (no history) on the rows of ``grads`` [T, D]: sum_i w_i g_i with
    the weights of :func:`excess_mtl_state` (T x torchjd's ``ExcessMTL(robust_step_size)``)."""
    weights, _ = excess_mtl_state(grads, None, robust_step_size, 0)
    if grads.shape[0] == 0:
        return grads.sum(dim=0)
    flat = grads.reshape(grads.shape[0], -1)
    return combine(weights, flat).reshape(grads.shape[1:])


class ExcessMTL(ParamRows):
    """Excess-MTL (He et al., ICML 2024, "Robust Multi-Task Learning with Excess Risks"): each
    task's excess risk is estimated by a second-order Taylor expansion with AdaGrad's diagonal
    Hessian, e_i = g_i^T H_i^-1 g_i, H_i = diag(sqrt(sum over steps of g_i^2)), relative to its
    first value (or its warm-up mean); the task weights take an exponentiated-gradient step
    w <- w exp(robust_step_size e) / Z; the update is sum_i T w_i g_i. Heads get their own loss's
    gradient.

    At the shared parameters only: the statistics are per parameter and task ([T, P], the
    parameters' dtype), the combiner's state with the weights (in checkpoints, so a resumed run
    is exact). Memory: T times the shared parameters, beside the [T, P] rows of the step.
    mtbench's own code of torchjd's ``ExcessMTLWeighting`` formula (its weights, on a float64
    copy of the rows, are checked against ours; the statistics stay in the rows' dtype to keep
    half the memory). Scale: T times
    torchjd's (its weights sum to 1): equal gradients give the baseline's sum at the first step.
    Options: ``robust_step_size``, ``n_warmup_steps``, ``chunk_size``.
    """

    name = "excess_mtl"
    style = ("#7b4173", "v")
    options = {
        "robust_step_size": Option(
            EXCESS_MTL_STEP_SIZE,
            "step size of the weights' exponentiated-gradient update (> 0)",
            number(0, min_open=True),
        ),
        "n_warmup_steps": Option(
            0, "steps of uniform weights whose mean excess risk is the baseline (>= 0; 0: the first step's)", integer(0)
        ),
        **ParamRows.options,
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.stats: dict[str, Any] | None = None

    def combine(self, rows: Tensor, step: Step) -> Tensor:
        weights, self.stats = excess_mtl_state(rows, self.stats, self.robust_step_size, self.n_warmup_steps)
        self.last_weights = weights
        return combine(weights, rows)

    def state_dict(self) -> dict[str, Any]:
        if self.stats is None:
            return {}
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.stats.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or state.get("sq_sum") is None:
            self.stats = None
            return
        self.stats = {
            "sq_sum": tensor_or_none(state["sq_sum"]),
            "log_weights": torch.as_tensor(state["log_weights"], dtype=torch.float64).clone(),
            "baseline": tensor_or_none(state.get("baseline")),
            "warmup_sum": torch.as_tensor(state["warmup_sum"], dtype=torch.float64).clone(),
            "steps": int(state["steps"]),
        }

"""DB-MTL: the gradients of the log losses, buffered by an EMA, each scaled to the largest norm."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.linalg import combine
from mtbench.combiners.paramrows import ParamRows, tensor_or_none
from mtbench.combiners.rows import _check_grads, _check_option
from mtbench.options import Option, number

DB_MTL_BETA, DB_MTL_BETA_SIGMA = 0.9, 0.0
#: added to each loss before its log, and to each buffered norm before dividing by it (LibMTL's)
DB_MTL_EPS = 1e-8


def db_mtl_state(
    log_grads: Tensor,
    buffer: Tensor | None = None,
    step: int = 1,
    beta: float = DB_MTL_BETA,
    beta_sigma: float = DB_MTL_BETA_SIGMA,
) -> tuple[Tensor, Tensor]:
    """One step of DB-MTL (Lin et al. 2023) on the gradients of the log losses ``log_grads``
    [T, D] (task i's row: grad log(L_i + 1e-8) = g_i / (L_i + 1e-8)): ``(weights, buffer)``.

    The buffer [T, D] (None: zeros) moves towards this step's rows,
    b <- r + (beta / step^beta_sigma) (b - r), ``step`` counting from 1; the weights
    a_i = max_j ||b_j|| / (||b_i|| + 1e-8) (float64) scale every buffered gradient to the
    largest norm; the update is sum_i a_i b_i. LibMTL's ``DB_MTL`` (its defaults beta 0.9,
    beta_sigma 0; the buffer starts at zero, without bias correction)."""
    _check_grads(log_grads, "db_mtl")
    _check_option("db_mtl", "beta", beta, 0.0 <= beta <= 1.0, "in [0, 1]")
    _check_option("db_mtl", "beta_sigma", beta_sigma, beta_sigma >= 0.0, ">= 0")
    _check_option("db_mtl", "step", step, isinstance(step, int) and step >= 1, "an integer >= 1")
    rows = log_grads.detach().reshape(log_grads.shape[0], math.prod(log_grads.shape[1:]))
    if buffer is None:
        buffer = torch.zeros_like(rows)
    elif buffer.shape != rows.shape:
        raise ValueError(f"db_mtl: buffer must have shape {tuple(rows.shape)}; got {tuple(buffer.shape)}")
    rate = beta / float(step) ** beta_sigma
    new = torch.lerp(rows, buffer.to(device=rows.device, dtype=rows.dtype), rate)  # r + rate (b - r)
    norms = torch.linalg.vector_norm(new.double(), dim=1)
    if norms.numel() == 0:
        return norms.cpu(), new
    weights = (norms.max() / (norms + DB_MTL_EPS)).cpu()
    return weights, new


def db_mtl(log_grads: Tensor, beta: float = DB_MTL_BETA, beta_sigma: float = DB_MTL_BETA_SIGMA) -> Tensor:
    """DB-MTL's first step (a zero buffer) on the rows of ``log_grads`` [T, D]: the combination
    sum_i a_i (1 - beta) r_i (:func:`db_mtl_state`), shape ``log_grads.shape[1:]``."""
    weights, _ = db_mtl_state(log_grads, None, 1, beta, beta_sigma)
    if log_grads.shape[0] == 0:
        return log_grads.sum(dim=0)
    flat = log_grads.reshape(log_grads.shape[0], -1)
    return combine(weights * (1.0 - beta), flat).reshape(log_grads.shape[1:])


class DBMTL(ParamRows):
    """DB-MTL (Lin et al. 2023, "Dual-Balancing for Multi-Task Learning"): the loss scales are
    balanced by taking the gradients of log(L_i + 1e-8), and the gradient magnitudes by scaling
    each task's (EMA-buffered) gradient of the shared parameters to the largest one's norm:
    b_i <- r_i + (beta / k^beta_sigma)(b_i - r_i) at step k, update sum_i (max_j ||b_j|| /
    ||b_i||) b_i. Each head gets the gradient of its log loss.

    At the shared parameters only (as LibMTL, which refuses its representation variant: the
    buffer holds one gradient of every shared parameter per task, across steps). The buffer
    [T, P] and the step count are the combiner's state (in checkpoints: T times the shared
    parameters' size). mtbench's own code of LibMTL's ``DB_MTL`` (torchjd has no DB-MTL).
    Scale: LibMTL's and the paper's (factor 1): equal agreeing gradients of equal losses L give
    T (1 - beta) g / L at the first step and approach T g / L. Options: ``beta``, ``beta_sigma``,
    ``chunk_size``.
    """

    name = "db_mtl"
    style = ("#637939", "p")
    options = {
        "beta": Option(DB_MTL_BETA, "EMA rate of the gradient buffer, in [0, 1] (LibMTL's 0.9)", number(0, 1)),
        "beta_sigma": Option(
            DB_MTL_BETA_SIGMA, "decay of the rate over steps, beta / k^beta_sigma (>= 0; LibMTL's 0)", number(minimum=0)
        ),
        **ParamRows.options,
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.buffer: Tensor | None = None
        self.steps = 0

    def head_scale(self, losses: Tensor) -> Tensor:
        return 1.0 / (losses + DB_MTL_EPS)  # d log(L + eps) = dL / (L + eps)

    def combine(self, rows: Tensor, step: Step) -> Tensor:
        if self.buffer is not None and self.buffer.shape != rows.shape:
            self.buffer = None  # (another model: start again)
        self.steps += 1
        weights, self.buffer = db_mtl_state(rows, self.buffer, self.steps, self.beta, self.beta_sigma)
        self.last_weights = weights
        return combine(weights, self.buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else self.buffer.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = tensor_or_none(state.get("buffer"))
        self.steps = int(state.get("steps", 0))

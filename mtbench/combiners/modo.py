"""MoDo (Chen, Fernando, Ying, Chen, JMLR 2024): multi-objective gradient descent with
double sampling, two independent mini-batches per step."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtbench.combiners.twobatch import TwoBatch, project_onto_simplex, two_batch_matrix
from mtbench.options import Option, number

__all__ = ["MoDo", "modo", "modo_weights"]


def modo_weights(matrix: Tensor, start: Tensor | None = None, gamma: float = 0.1, rho: float = 0.1) -> Tensor:
    """MoDo's weights after one step (eq. 2.9a): lambda <- Proj_simplex(lambda - gamma (A lambda +
    rho lambda)) from ``start`` (None: uniform), A = J1 J2^T [T, T] (float64)."""
    a = matrix.detach().to(torch.float64)
    T = a.shape[0]
    if T == 0:
        return a.new_zeros(0)
    lam = a.new_full((T,), 1.0 / T) if start is None else start.detach().to(a)
    return project_onto_simplex(lam - gamma * (a @ lam + rho * lam))


def modo(grads: Tensor, grads2: Tensor, start: Tensor | None = None, gamma: float = 0.1, rho: float = 0.1) -> Tensor:
    """MoDo's update from the per-task gradients of two independent batches [T, *D]:
    T sum_i lambda_i (g1_i + g2_i) / 2 with lambda = :func:`modo_weights` of A = J1 J2^T
    (mtbench's scale: T equal gradients g give T g)."""
    lam = modo_weights(two_batch_matrix(grads, grads2), start, gamma, rho)
    coef = (lam * grads.shape[0]).to(grads.dtype)
    return torch.tensordot(coef, (grads + grads2) * 0.5, dims=1)


class MoDo(TwoBatch):
    """MoDo (Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance", JMLR 2024, eq. 2.9): one projected
    gradient step on the weights lambda per training step, with A = J1 J2^T from two independent
    batches (double sampling), then the update J^T lambda on the mean of both batches' losses
    (eq. 2.9b). lambda is carried from step to step (state, saved in checkpoints). Math:
    torchjd 0.18's ``MoDoWeighting`` (checked against it step by step); scale: factor T."""

    name = "modo"
    style = ("#b5cf6b", ">")
    options: ClassVar[dict[str, Option]] = {
        **TwoBatch.options,
        "gamma": Option(0.1, "step size of the weights' update, > 0", number(minimum=0.0, min_open=True)),
        "rho": Option(0.1, "l2 regularisation of the weights' update, >= 0", number(minimum=0.0)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the weights lambda on the simplex (the next step's start); None before the first step
        self.lam: Tensor | None = None

    def simplex_weights(self, matrix: Tensor) -> Tensor:
        self.lam = modo_weights(matrix, self.lam, self.gamma, self.rho)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {"lam": None if self.lam is None else self.lam.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = state.get("lam")
        self.lam = None if lam is None else torch.as_tensor(lam, dtype=torch.float64).clone()

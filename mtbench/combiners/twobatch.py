"""Combiners whose task weights come from the per-task gradients of two independent
mini-batches (SDMGrad, MoDo): the T x T float64 matrix A = J1 J2^T of the shared parameters'
per-task gradients on batch 1 (rows of J1) and on batch 2 (rows of J2).

A is an unbiased estimate of the Gram matrix of the expected per-task gradients, which the
single-batch Gram matrix J1 J1^T is not (its diagonal carries the mini-batch's gradient
variance). It is not symmetric nor positive semi-definite in general.

The trainer draws the second batch (``Step.losses2``, ``Step.rep2``) for a combiner whose
``needs_second_batch`` is true; ``mtbench.backward`` takes it as ``second_losses`` (and
``second_features``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtbench.combiners.base import Combiner, Step, one_of
from mtbench.combiners.distributed import all_reduce_sum, global_losses, mark_summed
from mtbench.combiners.linalg import add_flat_grads, batched_vjp
from mtbench.combiners.taskgrads import default_chunk, param_grad_stack, rep_task_grads, shared_parameters
from mtbench.errors import MtbenchError
from mtbench.options import Option, integer

__all__ = ["TwoBatch", "project_onto_simplex", "second_step", "param_jacobian", "two_batch_matrix"]


def project_onto_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of the vector ``v`` [T] onto the probability simplex
    {w >= 0, sum w = 1} (the sort-based threshold: w = max(v - tau, 0))."""
    if v.numel() == 0:
        return v.clone()
    u, _ = torch.sort(v, descending=True)
    cssv = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    support = u - cssv / k > 0
    rho = int(torch.nonzero(support).max()) if bool(support.any()) else 0
    tau = cssv[rho] / (rho + 1)
    return (v - tau).clamp(min=0.0)


def two_batch_matrix(grads: Tensor, grads2: Tensor) -> Tensor:
    """A[i, j] = g1_i . g2_j in float64, from the two batches' per-task gradients [T, *D]."""
    if grads.shape != grads2.shape:
        raise ValueError(
            f"grads and grads2 must have the same shape (one row per task); got {tuple(grads.shape)} and {tuple(grads2.shape)}"
        )
    a = grads.detach().flatten(1).double() if grads.dim() > 1 else grads.detach().reshape(-1, 1).double()
    b = grads2.detach().flatten(1).double() if grads2.dim() > 1 else grads2.detach().reshape(-1, 1).double()
    return a @ b.T


def second_step(step: Step) -> Step:
    """The step of the second mini-batch: its inputs, representation, outputs and losses in
    the first batch's places."""
    return dataclasses.replace(step, inputs=step.inputs2, rep=step.rep2, outputs=step.outputs2, losses=step.losses2)


def param_jacobian(step: Step, params: list[Tensor], chunk_size: int) -> Tensor:
    """The per-task gradients of ``params`` [T, P] of the step's losses: through the
    representation (its per-task gradients, then ``chunk_size`` trunk backward passes at a
    time) where the step has one, else straight from the losses."""
    if step.rep is not None:
        return param_grad_stack(step, rep_task_grads(step).full(), params, chunk_size)
    losses = step.losses
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    grads = batched_vjp(losses, params, eye, retain_graph=True, allow_unused=True)
    rows = [
        (g if g is not None else torch.zeros((losses.shape[0], *p.shape), dtype=p.dtype, device=p.device)).reshape(
            losses.shape[0], -1
        )
        for g, p in zip(grads, params)
    ]
    return torch.cat(rows, dim=1)


class TwoBatch(Combiner):
    """Base of the two-batch methods: a subclass implements :meth:`simplex_weights` (the
    weights w on the simplex from A = J1 J2^T, updating its own state).

    The shared parameters' gradient is T sum_i w_i (g1_i + g2_i) / 2: the weighted gradient of
    the mean of the two batches' losses, on mtbench's scale (factor T: T equal gradients g give
    T g, the baseline's sum). Each head gets its own loss's gradient, averaged over the two
    batches. Level: the shared parameters only (at the representation the two batches'
    rows are different examples, and their products pair unrelated examples).
    """

    needs_second_batch = True
    #: under several processes each rank holds its slice of both batches: J1 and J2 summed
    ddp = (
        "the second batch's T losses, then both batches' per-task gradients of the shared parameters (2 T x P numbers)"
    )
    #: the levels this combiner has (``scripts/bench_step.py``'s rows)
    levels: ClassVar[tuple[str, ...]] = ("params",)
    options: ClassVar[dict[str, Option]] = {
        "level": Option(
            "params",
            "params: the per-task gradients of all shared parameters (the only level where J1 J2^T is defined)",
            one_of("params"),
        ),
        "chunk_size": Option(
            None,
            "tasks per batched backward pass; null: 1 on a CPU (a plain loop, faster there), 8 on a GPU",
            integer(minimum=1, optional=True),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the weights applied at the last step (T w, mtbench's scale)
        self.last_weights: Tensor | None = None
        #: the last step's A = J1 J2^T (float64)
        self.last_matrix: Tensor | None = None

    def simplex_weights(self, matrix: Tensor) -> Tensor:
        """The weights w [T] on the simplex from A [T, T] (float64); updates the state."""
        raise NotImplementedError

    def backward(self, step: Step) -> None:
        if step.losses2 is None:
            raise MtbenchError(
                f"combiner={self.name} needs a second, independent mini-batch per step: mtbench's trainer draws it; "
                "mtbench.backward takes it as second_losses= (and second_features=)"
            )
        if step.group is not None:  # the second batch's global losses (the first's are already)
            step = dataclasses.replace(step, losses2=global_losses(step.losses2, step.group))
        params = shared_parameters(step.model)
        chunk = default_chunk(self.chunk_size, step.losses.device)
        j1 = all_reduce_sum(param_jacobian(step, params, chunk), step.group)
        j2 = all_reduce_sum(param_jacobian(second_step(step), params, chunk), step.group)
        matrix = j1.double() @ j2.double().T
        w = self.simplex_weights(matrix)
        applied = w * self.num_tasks
        self.last_matrix, self.last_weights = matrix, applied
        coef = applied.to(j1.dtype) * 0.5  # no [T, P] temporary: each batch's rows combined apart
        flat = torch.mv(j1.T, coef).add_(torch.mv(j2.T, coef))
        add_flat_grads(params, flat)
        mark_summed(params)
        heads = step.model.head_parameters()
        if heads:
            total = (step.losses.sum() + step.losses2.sum()) * 0.5
            torch.autograd.backward(total, inputs=heads, retain_graph=True)

    def log_values(self) -> dict[str, float]:
        """The range of the last step's task weights (T w)."""
        if self.last_weights is None:
            return {}
        w = self.last_weights.detach()
        return {"w_min": float(w.min()), "w_max": float(w.max())}

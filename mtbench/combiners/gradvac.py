"""GradVac: pairwise gradient cosines pulled up to their running averages."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.pcgrad import _visit_orders
from mtbench.combiners.rows import (
    _check_option,
    _combine_rows,
)
from mtbench.options import Option, number


def gradvac_weights_from_gram(
    gram: Tensor,
    phi: Tensor | None = None,
    beta: float = 0.5,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """GradVac (Wang et al. 2021, Algorithm 1) from the Gram matrix: ``(weights, phi)``.

    For each task i, visiting the other tasks j in a fresh random order: phi_ij is the cosine
    of the current g_i' and the original g_j; if phi_ij < phi_hat_ij (the EMA target),
    g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2) + eps) g_j; then phi_hat_ij <- (1 - beta) phi_hat_ij + beta
    phi_ij. The output is sum_i g_i' (the baseline's sum when nothing conflicts), here as
    weights on the original g_k. ``phi`` is the [T, T] EMA (None: zeros); the updated one is
    returned. The same updates as torchjd's ``GradVacWeighting(beta, eps)``, as a compiled
    loop (:func:`mtbench.combiners.sequential.gradvac_visits`, numba; the tasks' updates are
    independent, so it runs one task after another).

    Generator use: for T >= 2, T calls ``torch.randperm(T - 1, generator=generator)`` in task
    order, task i's permutation indexing its other tasks in increasing order (the draws of
    torchjd's GradVac from the global generator, in the same order).
    """
    from mtbench.combiners.jd import gram_np64

    gn = gram_np64(gram, "gradvac")
    n_tasks = gn.shape[0]
    _check_option("gradvac", "beta", beta, isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0, "a number in [0, 1]")
    phi_t = (
        torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
        if phi is None
        else phi.detach().to(device="cpu", dtype=torch.float64).clone()
    )
    if tuple(phi_t.shape) != (n_tasks, n_tasks):
        raise ValueError(f"gradvac: phi must be [T, T] = [{n_tasks}, {n_tasks}]; got {tuple(phi_t.shape)}")
    if n_tasks < 2:
        return torch.ones(n_tasks, dtype=torch.float64), phi_t
    from mtbench.combiners.sequential import gradvac_visits

    order = _visit_orders(n_tasks, generator)  # [T, T-1]: task i's s-th visit
    coeff = np.eye(n_tasks)
    cg = gn.copy()  # row i: g_i' . g_k for every k (coeff @ G, kept up to date)
    gradvac_visits(gn, order, phi_t.numpy(), float(beta), float(eps), coeff, cg)  # compiled (numba), phi in place
    return torch.from_numpy(coeff.sum(axis=0)), phi_t


def gradvac(
    grads: Tensor,
    phi: Tensor | None = None,
    beta: float = 0.5,
    eps: float = 1e-8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """GradVac of the rows of ``grads`` (one step from the EMA ``phi``; see
    :func:`gradvac_weights_from_gram`); the updated EMA is not returned (use the weights
    function to carry it)."""
    return _combine_rows(grads, "gradvac", lambda gram: gradvac_weights_from_gram(gram, phi, beta, eps, generator)[0])


class GradVac(GramWeighted):
    """GradVac (Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", Algorithm 1).

    For each task i, visiting the other tasks in a fresh random order, the cosine phi_ij of
    the current g_i' with the original g_j is raised to its EMA target phi_hat_ij by adding a
    multiple of g_j when below it; phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij. The
    modified gradients are summed. The EMA [T, T] is the combiner's state (saved in
    checkpoints); the visiting orders come from the step's host generator.

    mtbench's own code (:func:`functional.gradvac_weights_from_gram`: the T - 1 visits
    vectorised over tasks, and randomness from mtbench's generator; torchjd's
    ``GradVacWeighting`` loops over every pair and draws from torch's global generator) makes
    the same updates, checked against torchjd. Scale: the sum, as in the paper and torchjd
    (factor 1). Options: those of :class:`GramWeighted` (``level`` defaulting to
    ``representation``), ``beta`` in [0, 1], ``eps`` >= 0.
    """

    name = "gradvac"
    style = ("#dbdb8d", "1")
    options = {
        **GramWeighted.level_default("representation"),
        "beta": Option(
            0.5, "EMA rate of the target cosines, in [0, 1] (torchjd's default 0.5)", number(minimum=0, maximum=1)
        ),
        "eps": Option(1e-8, "added to the denominators (>= 0)", number(minimum=0)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.phi: torch.Tensor | None = None

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.phi = gradvac_weights_from_gram(
            gram, self.phi, beta=self.beta, eps=self.eps, generator=step.cpu_generator
        )
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"phi": None if self.phi is None else self.phi.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phi = state.get("phi")
        self.phi = None if phi is None else torch.as_tensor(phi, dtype=torch.float64).clone()

    def log_values(self) -> dict[str, float]:
        if self.phi is None or self.num_tasks < 2:
            return {}
        off = ~torch.eye(self.num_tasks, dtype=torch.bool)
        return {"gradvac_mean_target": float(self.phi[off].mean())}

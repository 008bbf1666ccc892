"""PCD: a primary task followed as closely as possible, every other task guaranteed progress."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import _check_option, _combine_rows
from mtbench.errors import MtbenchError
from mtbench.options import Option, check_str, number

PCD_TAU, PCD_BETA, PCD_EPS = 0.02, 0.999, 1e-8


def _order(n_tasks: int, primary: int) -> list[int]:
    """The primary task first, then the others in their order (torchjd's row order)."""
    return [primary] + [i for i in range(n_tasks) if i != primary]


def pcd_weights_from_gram(
    gram: Tensor,
    primary: int = 0,
    sq_norm_ema: Tensor | None = None,
    n_steps: int = 0,
    tau: float = PCD_TAU,
    beta: float = PCD_BETA,
    eps: float = PCD_EPS,
) -> tuple[Tensor, Tensor, int]:
    """PCD (Priority-Constrained Descent) from the Gram matrix: ``(weights, sq_norm_ema, n_steps)``.

    T times the weights of torchjd's ``PCDWeighting(tau, beta, eps)`` on the Gram matrix with
    task ``primary``'s row and column moved first: the direction closest to the primary task's
    normalised gradient that gives every other task at least ``tau`` of the progress along its
    own normalised gradient, rescaled to the primary gradient's norm. The normalisation s_i =
    1 / sqrt(v_i + eps) uses the bias-corrected EMA v_i (decay ``beta``) of ||g_i||^2 over the
    calls: ``sq_norm_ema`` [T] (in task order; None: zeros) and ``n_steps`` (the calls so far)
    are that state, and the updated state is returned. Equal agreeing gradients g give T g.
    """
    from mtbench.combiners.jd import gram_cpu64, weighting

    g = gram_cpu64(gram, "pcd")
    n_tasks = g.shape[0]
    _check_option("pcd", "primary", primary, isinstance(primary, int) and 0 <= primary < n_tasks, f"in [0, {n_tasks})")
    _check_option("pcd", "tau", tau, 0.0 <= tau <= 1.0, "in [0, 1]")
    _check_option("pcd", "beta", beta, 0.0 <= beta < 1.0, "in [0, 1)")
    _check_option("pcd", "eps", eps, eps >= 0.0, ">= 0")
    order = _order(n_tasks, primary)
    idx = torch.tensor(order)
    w = weighting("PCDWeighting", "pcd", tau=float(tau), beta=float(beta), eps=float(eps))
    if sq_norm_ema is not None:
        ema = torch.as_tensor(sq_norm_ema, dtype=torch.float64).reshape(-1)
        if ema.shape[0] != n_tasks:
            raise ValueError(f"pcd: sq_norm_ema must have T = {n_tasks} entries; got {ema.shape[0]}")
        w._sq_norm_ema = ema[idx].clone()
        w._n_steps = torch.tensor(int(n_steps))
        w._state_key = n_tasks
    weights = w(g[idx][:, idx])
    out = torch.empty(n_tasks, dtype=torch.float64)
    out[idx] = n_tasks * weights.to(torch.float64)
    ema_out = torch.empty(n_tasks, dtype=torch.float64)
    ema_out[idx] = w._sq_norm_ema.to(torch.float64)
    return out, ema_out, int(w._n_steps)


def pcd(grads: Tensor, primary: int = 0, tau: float = PCD_TAU, beta: float = PCD_BETA, eps: float = PCD_EPS) -> Tensor:
    """PCD of the rows of ``grads`` [T, D] with no history (the first call's EMA): T x torchjd's
    ``PCD(tau, beta, eps)`` with row ``primary`` first."""
    return _combine_rows(grads, "pcd", lambda gram: pcd_weights_from_gram(gram, primary, None, 0, tau, beta, eps)[0])


class PCD(GramWeighted):
    """PCD (Priority-Constrained Descent; torchjd's ``PCD``, "Not All Objectives Are Born Equal",
    TMLR 2026): the update follows the primary task's normalised gradient as closely as possible
    subject to each secondary task getting at least the fraction ``tau`` of the first-order
    progress of a step along its own normalised gradient; it is rescaled to the primary
    gradient's norm. Each gradient is normalised by the root of a bias-corrected EMA (decay
    ``beta``) of its squared norm: the EMA [T] and the step count are the combiner's state.

    ``primary`` names the primary task (one of the task's names; null: the first task). The
    weights are torchjd's ``PCDWeighting`` on mtbench's float64 Gram matrix
    (:func:`functional.pcd_weights_from_gram`). Scale: T times torchjd's (whose output has the
    primary gradient's norm), so equal agreeing gradients give the baseline's sum. Options:
    those of :class:`GramWeighted` (``level`` defaulting to ``representation``), ``primary``,
    ``tau``, ``beta``, ``eps``.
    """

    name = "pcd"
    style = ("#8c564b", "P")
    options = {
        **GramWeighted.level_default("representation"),
        "primary": Option(
            None,
            "the primary task's name (one of the task's names); null: the first task",
            lambda key, value, owner: check_str(key, value, optional=True),
        ),
        "tau": Option(PCD_TAU, "the progress guaranteed to each secondary task, in [0, 1]", number(0, 1)),
        "beta": Option(
            PCD_BETA, "decay of the EMA of the squared gradient norms, in [0, 1)", number(0, 1, max_open=True)
        ),
        "eps": Option(PCD_EPS, "added to the EMA before its inverse square root (>= 0)", number(minimum=0)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the primary task's index (the first task until the task names are known)
        self.primary_index = 0
        self._named = self.primary is None
        self.sq_norm_ema: Tensor | None = None
        self.n_steps = 0

    def bind_tasks(self, task_names: Sequence[str]) -> None:
        names = [str(n) for n in task_names]
        if self.primary is None:
            return
        if self.primary not in names:
            raise MtbenchError(
                f"combiner.primary={self.primary!r} is not a task of this run; the task names are: {', '.join(names)}"
            )
        self.primary_index = names.index(self.primary)
        self._named = True

    def gram_weights(self, gram: Tensor, step: Step) -> Tensor:
        if not self._named:
            raise MtbenchError(
                f"combiner.primary={self.primary!r} names a task, but the task names were not given "
                "(build the combiner with build_combiner(..., task_names=...))"
            )
        weights, self.sq_norm_ema, self.n_steps = pcd_weights_from_gram(
            gram, self.primary_index, self.sq_norm_ema, self.n_steps, self.tau, self.beta, self.eps
        )
        return weights

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.sq_norm_ema is None else self.sq_norm_ema.clone()
        return {"sq_norm_ema": ema, "n_steps": self.n_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("sq_norm_ema")
        self.sq_norm_ema = None if ema is None else torch.as_tensor(ema, dtype=torch.float64).clone()
        self.n_steps = int(state.get("n_steps", 0))

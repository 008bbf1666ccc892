"""CAGrad: the update that best improves the worst task within a ball around the mean gradient."""

from __future__ import annotations

from typing import Any

import torch

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.functional import CAGRAD_SOLVERS, cagrad_solve, cagrad_weights_from_gram
from mtbench.combiners.gramweighted import GramWeighted, WarmStarted
from mtbench.options import Option, number


class CAGrad(WarmStarted):
    """CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
    Algorithm 1): d = g0 + (sqrt(phi) / ||g_w||) g_w, g0 the mean gradient, sqrt(phi) = c ||g0||,
    g_w = sum_i w_i g_i with w on the simplex minimising g_w . g0 + sqrt(phi) ||g_w||.

    mtbench's own solver computes the weights from the float64 Gram matrix (``solver: active_set``,
    :func:`functional.cagrad_weights_from_gram`): the dual problem is MGDA's min-norm problem on
    the points g_i + t g0 plus one equation in t, solved exactly along its active sets with
    Wolfe's algorithm, each solve warm-started from the last step's weights (the combiner's
    state, saved in checkpoints). ``solver: cvxpy`` is torchjd's ``CAGradWeighting(c)``
    (cvxpy's CLARABEL), the same weights to its interior-point tolerance (about 1e-4 relative
    on the worst task's progress), far slower (rows ``cagrad`` and ``cagrad-cvxpy`` of
    ``scripts/bench_solvers.py``). On the Pareto front
    (the dual's optimum at g_w = 0) d is g0 projected onto the dual cone, the optimal update
    nearest g0 (torchjd: zero).

    Scale: T / (1 + c) times the paper's d (and torchjd's ``CAGrad(c)``): equal agreeing
    gradients give d = (1 + c) g, here the baseline's sum T g (the authors' code's
    ``rescale=2`` divides by 1 + c too). Options: those of :class:`GramWeighted` (``level``
    defaulting to ``representation``), ``c`` >= 0 (0: the mean gradient) and ``solver``.
    """

    name = "cagrad"
    style = ("#98df8a", "H")
    options = {
        **GramWeighted.level_default("representation"),
        "c": Option(
            0.4,
            "radius of the ball around the mean gradient, relative to its norm (>= 0; the paper's 0.4)",
            number(minimum=0),
        ),
        "solver": Option(
            "active_set",
            "active_set: mtbench's exact solve (warm-started); cvxpy: torchjd's CLARABEL solve",
            one_of(*CAGRAD_SOLVERS),
        ),
    }

    def __init__(self, num_tasks: int, **options):
        super().__init__(num_tasks, **options)
        #: the free set of the last Pareto-front step's dual-cone projection (its next start)
        self.front: torch.Tensor | None = None
        # a missing solver fails here
        cagrad_weights_from_gram(torch.eye(1, dtype=torch.float64), c=self.c, solver=self.solver)

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        weights, self.start, front = cagrad_solve(gram, self.c, self.solver, self.start, self.front)
        if front is not None:
            self.front = front
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "front": None if self.front is None else self.front.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        front = state.get("front")
        self.front = None if front is None else torch.as_tensor(front, dtype=torch.bool).clone()

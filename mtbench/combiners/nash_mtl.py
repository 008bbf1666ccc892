"""Nash-MTL: the Nash bargaining solution of the tasks' gradients."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from mtbench.combiners.base import Step
from mtbench.combiners.functional import gram_square_root
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.jd import gram_cpu64, weighting
from mtbench.options import Option, integer, number


class NashMTL(GramWeighted):
    """Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game", Algorithm 1):
    weights alpha > 0 solving G alpha = 1 / alpha (G divided by its Frobenius norm, as in the
    authors' code), by ``optim_niter`` convex-concave steps, each warm-started from the last
    step's alpha (the combiner's state, saved in checkpoints); recomputed every
    ``update_weights_every`` steps, reused in between.

    torchjd's ``NashMTL`` weighting (cvxpy/ECOS) computes the weights; it reads a matrix, so it
    gets M with M M^T = G from mtbench's float64 Gram matrix (:func:`functional.gram_square_root`).
    Scale: the weights multiply the raw gradients, as in the authors' code and torchjd; equal
    agreeing gradients get alpha = 1, the baseline's sum (factor 1). ``max_norm`` > 0 scales the
    update down to that norm when longer (the authors' default 1.0; here 0 = off, since clipping
    changes the scale; ``combiner=clip`` is mtbench's clipping).
    """

    name = "nash_mtl"
    style = ("#9edae5", "2")
    options = {
        **GramWeighted.level_default("representation"),
        "max_norm": Option(0.0, "clip the update to this norm (>= 0; 0: off; the authors' code uses 1.0)", number(minimum=0)),
        "update_weights_every": Option(1, "recompute the weights every this many steps (>= 1)", integer(minimum=1)),
        "optim_niter": Option(20, "convex-concave iterations per solve (>= 1)", integer(minimum=1)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self._solver = self._new_solver()
        self.steps = 0
        self.weights: torch.Tensor | None = None

    def _new_solver(self) -> Any:
        return weighting(
            "NashMTL", "nash_mtl", n_tasks=self.num_tasks, max_norm=self.max_norm, update_weights_every=1, optim_niter=self.optim_niter
        ).weighting

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        if self.weights is None or self.steps % self.update_weights_every == 0:
            g = gram_cpu64(gram, "nash_mtl")
            if not float(g.diagonal().max()) > 0:
                self.weights = torch.ones(self.num_tasks, dtype=torch.float64)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # cvxpy: the problem is not DPP
                    self.weights = self._solver(gram_square_root(g)).to(torch.float64)
        self.steps += 1
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "alpha": torch.as_tensor(np.asarray(self._solver.prvs_alpha, dtype=np.float64)),
            "weights": None if self.weights is None else self.weights.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self._solver = self._new_solver()
        alpha = state.get("alpha")
        if alpha is not None and self.steps > 0:
            self._solver.prvs_alpha = torch.as_tensor(alpha, dtype=torch.float64).numpy().copy()
        weights = state.get("weights")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).clone()

"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, ICLR 2023): multi-objective gradient
correction, a tracked estimate of the per-task gradients and a weight update on it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtbench.combiners.base import Combiner, Step
from mtbench.combiners.distributed import all_reduce_sum, mark_summed
from mtbench.combiners.linalg import add_flat_grads
from mtbench.combiners.taskgrads import default_chunk, shared_parameters
from mtbench.combiners.twobatch import TwoBatch, param_jacobian
from mtbench.options import Option, boolean, number

__all__ = ["MoCo", "moco", "moco_update"]

#: added to a gradient's norm before dividing by it (``normalize: true``), as LibMTL
MOCO_EPS = 1e-8


def moco_update(
    grads: Tensor,
    losses: Tensor | None,
    y: Tensor | None,
    lam: Tensor | None,
    k: int,
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """MoCo's step ``k`` (1, 2, ...) from this step's per-task gradients ``grads`` [T, *D]:

    * with ``normalize``: g_i <- g_i / (|g_i| + 1e-8) * L_i (``losses`` [T], detached);
    * the tracked estimate y <- y - beta k^(-beta_sigma) (y - g) (``y`` None: zeros);
    * the weights lambda <- softmax(lambda - gamma k^(-gamma_sigma) (Y Y^T + rho I) lambda)
      (``lam`` None: uniform; the Gram matrix in float64).

    Returns the new ``(y, lambda)``; the update direction is Y^T lambda. The new y is
    differentiable in ``grads`` (a fixed linear combination of them and the detached old y)."""
    T = grads.shape[0]
    if T == 0:  # no task: nothing to track
        return grads.detach().clone(), grads.new_zeros(0, dtype=torch.float64)
    g = grads.reshape(T, -1)
    if normalize:  # the factors L_i / (|g_i| + eps) are weights: detached, as every solver's
        if losses is None:
            raise ValueError("moco_update with normalize=True needs the losses (one per task)")
        norms = g.detach().norm(dim=1, keepdim=True)
        g = g * (losses.detach().reshape(T, 1).to(g.dtype) / (norms + MOCO_EPS))
    old = torch.zeros_like(g.detach()) if y is None else y.detach().reshape(T, -1).to(g)
    step = beta / k**beta_sigma
    y_flat = (1.0 - step) * old + step * g
    lam64 = (
        g.new_full((T,), 1.0 / T, dtype=torch.float64)
        if lam is None
        else lam.detach().to(device=g.device, dtype=torch.float64)
    )
    yy = y_flat.detach().double()
    gram = yy @ yy.T + rho * torch.eye(T, dtype=torch.float64, device=g.device)
    lam64 = torch.softmax(lam64 - gamma / k**gamma_sigma * (gram @ lam64), dim=0)
    return y_flat.reshape(grads.shape), lam64


def moco(
    grads: Tensor,
    losses: Tensor | None = None,
    y: Tensor | None = None,
    lam: Tensor | None = None,
    k: int = 1,
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    normalize: bool = True,
) -> Tensor:
    """MoCo's update at step ``k`` from the state (``y``, ``lam``) and this step's gradients
    (:func:`moco_update`): T Y^T lambda (mtbench's scale: factor T, the weights sum to 1)."""
    y_new, lam_new = moco_update(grads, losses, y, lam, k, beta, beta_sigma, gamma, gamma_sigma, rho, normalize)
    T = grads.shape[0]
    return torch.tensordot((lam_new * T).to(grads.dtype), y_new, dims=1)


class MoCo(Combiner):
    """MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach", ICLR 2023, Algorithm 1, as LibMTL's ``MoCo``): a tracked estimate Y of
    the per-task gradients of the shared parameters (moving average, step beta / k^beta_sigma),
    the weights lambda updated by one step on lambda^T Y Y^T lambda (softmax of the step, as
    LibMTL), the update T Y^T lambda (factor T: mtbench's scale). The heads get their own
    losses' gradients. State: Y [T, P] (T times the shared parameters), lambda and the step
    count k, saved in checkpoints. torchjd 0.18 has no MoCo: mtbench's own code, checked
    against an independent reimplementation of LibMTL's."""

    name = "moco"
    style = ("#e6550d", "d")
    ddp = "the per-task gradients of the shared parameters (T x P numbers), then the heads' gradients summed once"
    #: the levels this combiner has (``scripts/bench_step.py``'s rows)
    levels: ClassVar[tuple[str, ...]] = ("params",)
    options: ClassVar[dict[str, Option]] = {
        "level": TwoBatch.options["level"].replace(
            doc="params: the per-task gradients of all shared parameters (the tracked Y follows fixed coordinates)"
        ),
        "chunk_size": TwoBatch.options["chunk_size"],
        "beta": Option(0.5, "step of the tracked gradients at k = 1, in (0, 1]", number(0.0, 1.0, min_open=True)),
        "beta_sigma": Option(0.5, "decay exponent of beta's step (beta / k^beta_sigma), >= 0", number(minimum=0.0)),
        "gamma": Option(0.1, "step of the weights at k = 1, > 0", number(minimum=0.0, min_open=True)),
        "gamma_sigma": Option(0.5, "decay exponent of gamma's step (gamma / k^gamma_sigma), >= 0", number(minimum=0.0)),
        "rho": Option(0.0, "l2 regularisation of the weights' update, >= 0", number(minimum=0.0)),
        "normalize": Option(
            True, "rescale each task's gradient to the length of its loss before tracking (LibMTL)", boolean()
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the tracked per-task gradients [T, P]; None before the first step
        self.y: Tensor | None = None
        #: the weights lambda [T] (float64); None before the first step
        self.lam: Tensor | None = None
        #: steps taken
        self.k = 0
        #: the weights applied at the last step (T lambda)
        self.last_weights: Tensor | None = None

    def backward(self, step: Step) -> None:
        params = shared_parameters(step.model)
        grads = param_jacobian(step, params, default_chunk(self.chunk_size, step.losses.device))
        grads = all_reduce_sum(grads, step.group)  # (several processes: the global batch's)
        self.k += 1
        y, self.lam = moco_update(
            grads,
            step.losses,
            self.y,
            self.lam,
            self.k,
            self.beta,
            self.beta_sigma,
            self.gamma,
            self.gamma_sigma,
            self.rho,
            self.normalize,
        )
        self.y = y.detach()
        applied = self.lam * self.num_tasks
        self.last_weights = applied
        flat = self.y.T @ applied.to(self.y.dtype)
        add_flat_grads(params, flat)
        mark_summed(params)
        self.backward_heads(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "y": None if self.y is None else self.y.clone(),
            "lam": None if self.lam is None else self.lam.clone(),
            "k": self.k,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        y, lam = state.get("y"), state.get("lam")
        self.y = None if y is None else torch.as_tensor(y).clone()
        self.lam = None if lam is None else torch.as_tensor(lam, dtype=torch.float64).clone()
        self.k = int(state.get("k", 0))

    def log_values(self) -> dict[str, float]:
        if self.last_weights is None:
            return {}
        w = self.last_weights.detach()
        return {"w_min": float(w.min()), "w_max": float(w.max())}

"""GradNorm: task weights learned to balance the tasks' gradient norms."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtbench.combiners import distributed
from mtbench.combiners.base import Combiner, Step, one_of, positive
from mtbench.combiners.linalg import batched_vjp
from mtbench.combiners.taskgrads import (
    LayerCapture,
    captured_layers,
    factored_gram,
    factored_layer,
    layer_input_matrix,
    layer_output_matrix,
    linear_heads_of,
    rep_task_grads,
)
from mtbench.options import Option, number


class GradNorm(Combiner):
    """GradNorm (Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", Sec. 3.2, eq. 2 and Algorithm 1).

    Learnable task weights w_i start at 1. Each step, with W the last shared layer's
    weights and L_i(0) the losses of the FIRST training step:

        G_i = || d(w_i L_i)/dW ||_2 = |w_i| ||dL_i/dW||_2
        Ltilde_i = L_i(t) / L_i(0),   r_i = Ltilde_i / mean_j Ltilde_j
        L_grad = sum_i | G_i - mean_j(G_j) * r_i^alpha |      (the target term is a constant)

    Only the w_i learn from L_grad (Adam with their own learning rate ``weight_lr``), then
    they are clamped at 0 and renormalised to sum to T. The network is trained on
    sum_i w_i L_i with this step's weights (before their update), so its gradient is on
    the baseline's scale. Because G_i is |w_i| times a norm that does not depend on w,
    L_grad's gradient needs no second-order backward pass and nothing from it reaches the
    network's own gradients.

    Implementation: only the norms ||dL_i/dW|| are needed, never the gradients. At the
    representation they come from :func:`taskgrads.rep_task_grads` (through the stock linear
    heads by the chain rule). At a convolution or linear layer with input X (unfolded, N
    positions x K) and per-task output gradients D_i (N x C_out), dL_i/dW = D_i^T X, so
    ||dL_i/dW||^2 = <D_i, (X X^T) D_i>; when that is cheaper than forming the T weight
    gradients (N^2 (K + T C_out) < T N C_out K, e.g. ResNet's last 3x3 convolution) it is
    used (a forward hook, armed before the first step, keeps the layer's input and output);
    otherwise one batched autograd call gives the T gradients of W. With the stock linear
    heads both start at the representation, from the tasks' gradients there in closed form
    (e[b, i] W_i), instead of at the losses (bit for bit the same norms, without a batched
    backward pass through the heads, whose cost grows as T^2). The choice is made at
    every step from that step's shapes alone (a smaller last batch may choose differently),
    so a resumed run takes the same path as an uninterrupted one.
    """

    name = "gradnorm"
    ddp = (
        "the norms' squares at the representation (T numbers), or the T per-task gradients of the last shared layer; "
        "the T losses"
    )
    style = ("#2ca02c", "P")
    options = {
        "alpha": Option(1.5, "the asymmetry alpha: how strongly the slower tasks are pushed", number(minimum=0)),
        "weight_lr": Option(0.025, "learning rate of the task weights (their own Adam)", positive()),
        "grad_at": Option(
            "last_shared",
            "W: last_shared (the trunk's last layer with a weight matrix or kernel) | representation (flattened over batch and features)",
            one_of("last_shared", "representation"),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the forward hook keeping the last shared layer's input and output (grad_at=last_shared)
        self.capture = LayerCapture()
        self.w: torch.Tensor | None = None
        self.initial_losses: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def representation_use(self) -> str | None:
        return "combiner.grad_at=last_shared" if self.grad_at == "representation" else None

    def _setup(self, like: torch.Tensor) -> None:
        self.w = torch.ones(self.num_tasks, device=like.device, dtype=like.dtype, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.w], lr=self.weight_lr)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    @staticmethod
    def last_shared_weight(model: torch.nn.Module) -> torch.Tensor:
        return GradNorm.last_shared_layer(model)[1]

    @staticmethod
    def last_shared_layer(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor]:
        """(module, weight) of the trunk's last layer with a weight matrix or kernel."""
        layers = [
            (m, m.weight) for m in model.trunk.modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)
        ]
        layers = [(m, w) for m, w in layers if w.dim() >= 2 and w.requires_grad]
        if not layers:
            raise ValueError(
                "gradnorm: the trunk has no layer with a weight matrix; use combiner.grad_at=representation"
            )
        return layers[-1]

    def grad_norms(self, step: Step) -> torch.Tensor:
        """||dL_i/dW|| for the T tasks (W as ``grad_at`` says), in the losses' dtype."""
        losses = step.losses
        if self.grad_at == "representation":  # per example: the squares sum over the ranks
            sq = distributed.all_reduce_sum(rep_task_grads(step).sq_norms(), step.group)
            return sq.clamp_min(0).sqrt().to(device=losses.device, dtype=losses.dtype)
        module, weight = self.last_shared_layer(step.model)
        source, cotangents = self._cotangents(step)
        if step.group is not None:  # the layer's per-task gradients are sums over the ranks: sum them
            (grads,) = batched_vjp(source, [weight], cotangents, retain_graph=True)
            return distributed.all_reduce_sum(grads.flatten(1), step.group).norm(dim=1)
        norms = self._factored_norms(step, module, weight, source, cotangents)
        if norms is None:
            (grads,) = batched_vjp(source, [weight], cotangents, retain_graph=True)
            norms = grads.flatten(1).norm(dim=1)
        return norms

    @staticmethod
    def _cotangents(step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the per-task backward passes to W start: at the representation with the tasks'
        gradients there when the stock linear heads give them in closed form
        (:func:`taskgrads.rep_task_grads`: e[b, i] W_i, no backward pass through the heads per
        task), else at the losses with the identity. The two are the same chain rule (W
        reaches the losses through the representation only); the first skips a [T, B, T] x
        [T, D] product through the heads, which dominates at many tasks."""
        if linear_heads_of(step) is not None:
            return step.rep, rep_task_grads(step).full()
        losses = step.losses
        return losses, torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)

    def prepare(self, model: torch.nn.Module) -> None:
        if self.grad_at == "last_shared":  # arm the layer's hook before the first step
            try:
                module, _ = self.last_shared_layer(model)
            except (ValueError, AttributeError):
                return  # (the first step names the problem)
            if factored_layer(module):
                self.capture.watch([module])

    @staticmethod
    def _factored_pays(module: torch.nn.Module, out: torch.Tensor, t: int) -> bool:
        """Are the norms cheaper through X X^T than through the T weight gradients, for this
        call's shapes (N positions, K weight columns, C output channels)?"""
        n = out.numel() // (out.shape[1] if isinstance(module, torch.nn.Conv2d) else out.shape[-1])
        k, c = module.weight[0].numel(), module.weight.shape[0]
        return 2 * (n * n * k + t * n * n * c + t * n * c) < t * n * c * k

    def _factored_norms(
        self, step: Step, module: torch.nn.Module, weight: torch.Tensor, source: torch.Tensor, cotangents: torch.Tensor
    ) -> torch.Tensor | None:
        """The norms through the layer's input and output gradients (the per-task backward
        passes from ``source`` with ``cotangents``, see :meth:`_cotangents`), or None (hook not
        armed yet, or not cheaper for this step's shapes)."""
        if not factored_layer(module):
            return None
        capture = self.capture
        if not capture.watching(module):
            capture.watch([module])  # (without prepare) from the next step on
            return None
        t = step.losses.shape[0]
        layers = captured_layers(step, capture, [module], select=lambda m, x, out: self._factored_pays(m, out, t))
        if not layers:
            return None
        _, x, out = layers[0]
        xm = layer_input_matrix(module, x)
        (d,) = batched_vjp(source, [out], cotangents, retain_graph=True)
        sq = factored_gram(xm, layer_output_matrix(module, d), diagonal=True)
        return sq.clamp_min(0).sqrt().to(device=step.losses.device, dtype=step.losses.dtype)

    def task_weights(self, step: Step) -> torch.Tensor:
        """This step's weights (detached); updates w for the next step as a side effect."""
        losses = step.losses
        if self.w is None:
            self._setup(losses)
        assert self.w is not None and self.optimizer is not None
        if self.initial_losses is None:
            self.initial_losses = losses.detach().clone()
        norms = self.grad_norms(step)
        current = self.w.detach().clone()

        G = self.w.abs() * norms.detach()
        ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
        r = ratio / ratio.mean()
        target = (G.mean() * r.pow(self.alpha)).detach()
        l_grad = (G - target).abs().sum()
        self.optimizer.zero_grad(set_to_none=True)
        (self.w.grad,) = torch.autograd.grad(l_grad, self.w)
        self.optimizer.step()
        with torch.no_grad():  # (no host synchronisation: torch.where instead of an if)
            self.w.clamp_(min=0)
            total = self.w.sum()
            self.w.copy_(torch.where(total > 0, self.w * (self.num_tasks / total), torch.ones_like(self.w)))
        self.last_weights = current
        return current

    def backward(self, step: Step) -> None:
        w = self.task_weights(step)
        (w * step.losses).sum().backward()

    def state_dict(self) -> dict[str, Any]:
        if self.w is None:
            return {}
        assert self.optimizer is not None
        state = {"w": self.w.detach(), "initial_losses": self.initial_losses, "optimizer": self.optimizer.state_dict()}
        return copy.deepcopy(state)  # a snapshot: later steps must not change it

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.w is None:  # weights live on the training device: restore at the first step
            self._pending_state = state
            return
        assert self.optimizer is not None
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.initial_losses = None if state["initial_losses"] is None else state["initial_losses"].to(self.w.device)
        self.optimizer.load_state_dict(state["optimizer"])

    def log_values(self) -> dict[str, float]:
        if self.w is None:
            return {}
        w = self.w.detach()
        return {"w_min": float(w.min()), "w_max": float(w.max())}

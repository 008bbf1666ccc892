"""Per-task gradients at the shared representation A: :func:`rep_task_grads` returns a
:class:`RepGrads`, the T gradients dL_i/dA held as a stack or factored through linear heads.

The general way is one batched autograd call over the heads (a loop of T calls where vmap
cannot run). With the stock :class:`~mtbench.models.LinearHeads` (logits ``O = A W^T + b``) the
chain rule gives ``dL_i/dA = (dL_i/dO) W`` exactly, so autograd takes only the Jacobian of the
losses at the logits; when each loss reads its own logit column, ``dL_i/dA[b] = e[b, i] W_i``
and the Gram matrix ``(sum_b e[b, i] e[b, j]) (W_i . W_j)`` never needs the T x B x D stack; when
the task promises per-column losses (``Step.column_losses``), ``e`` comes from one backward pass
of ``sum_i L_i``. Every result equals the plain computation up to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtbench.combiners.linalg import batched_vjp, combine, gram64


def task_grads_at(losses: Tensor, tensor: Tensor, retain_graph: bool = True) -> Tensor:
    """All T per-task gradients dL_i/d(tensor), shape [T, *tensor.shape]: one batched autograd
    call (vmap over the backward pass), a loop over tasks where vmap cannot run the backward."""
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    (grads,) = batched_vjp(losses, [tensor], eye, retain_graph=retain_graph)
    return grads


class RepGrads:
    """The T per-task gradients g_i = dL_i/dA at the shared representation A (shape [B, *F]).

    Either held as a stack [T, B, *F] (``full``) or factored through linear heads with weight
    W [O, D] (D = prod F): ``g_i = J_i W`` with ``J_i = dL_i/dO`` [B, O], or, when each loss
    reads only its own logit column, ``g_i[b] = e[b, i] W_i`` (``diag`` = e [B, T]; ``jac`` may
    then be omitted).
    """

    def __init__(
        self,
        rep: Tensor,
        *,
        full: Tensor | None = None,
        jac: Tensor | None = None,
        weight: Tensor | None = None,
        diag: Tensor | None = None,
        linear: nn.Linear | None = None,
    ):
        self.shape = tuple(rep.shape)
        self.dtype = rep.dtype
        self.device = rep.device
        self._full = full
        self._jac = jac  # [T, B, O]
        self._weight = weight  # [O, D], detached
        self._diag = diag  # [B, T]
        self._factors: tuple[Tensor, Tensor] | None = None  # (e, W) in float64
        #: the heads' ``nn.Linear`` when ``diag`` came from per-column losses (the heads'
        #: gradient of sum_i L_i is then ``diag^T A``: :meth:`add_head_grads`)
        self.linear = linear
        if full is not None:
            self.num_tasks = int(full.shape[0])
        elif jac is not None:
            self.num_tasks = int(jac.shape[0])
        elif diag is not None and weight is not None:
            self.num_tasks = int(diag.shape[1])
        else:
            raise ValueError("RepGrads needs a full stack or a factored form")

    @property
    def factored(self) -> bool:
        return self._full is None

    def column_factors(self) -> tuple[Tensor, Tensor] | None:
        """``(e, W)`` with ``g_i[b] = e[b, i] W_i`` (e [B, T], W [T, D]) when the gradients are
        held in that form (linear heads, per-column losses), else None."""
        if self._diag is None or self._full is not None:
            return None
        return self._diag, self._weight

    def add_head_grads(self, rep: Tensor) -> bool:
        """Accumulate the heads' gradient of sum_i L_i into their ``.grad`` in closed form,
        ``dW = e^T A``, ``db = sum_b e`` (what autograd's linear backward computes, without
        another pass through the losses' graph); False (nothing done) unless the gradients
        came from per-column losses through linear heads."""
        lin = self.linear
        if lin is None or self._diag is None:
            return False
        e = self._diag
        grads = [(lin.weight, e.T @ rep.detach().reshape(rep.shape[0], -1))]
        if lin.bias is not None:
            grads.append((lin.bias, e.sum(0)))
        for param, g in grads:
            if param.requires_grad:
                param.grad = g if param.grad is None else param.grad.add_(g)
        return True

    def _factors64(self) -> tuple[Tensor, Tensor]:
        """``(e, W)`` of the per-column form in float64 (converted once: the Gram matrix and
        the combination both read them)."""
        if self._factors is None:
            self._factors = (self._diag.double(), self._weight.double())
        return self._factors

    def full(self) -> Tensor:
        """The stack [T, B, *F] (materialised once)."""
        if self._full is None:
            T = self.num_tasks
            if self._diag is not None:
                stack = self._diag.T.unsqueeze(-1) * self._weight.unsqueeze(1)  # [T, B, D]
            else:
                stack = torch.matmul(self._jac, self._weight)
            self._full = stack.reshape((T,) + self.shape)
        return self._full

    def gram(self) -> Tensor:
        """``G[i, j] = g_i . g_j`` over batch and features, float64, on the gradients' device."""
        if self._diag is not None:
            e, w = self._factors64()
            return (e.T @ e) * (w @ w.T)
        return gram64(self.full().reshape(self.num_tasks, -1))

    def sq_norms(self) -> Tensor:
        """``||g_i||^2``, float64 [T]."""
        if self._diag is not None:
            e, w = self._factors64()
            return e.pow(2).sum(0) * w.pow(2).sum(1)
        return (
            self.gram().diagonal().clone()
            if self.factored
            else self._full.reshape(self.num_tasks, -1).double().pow(2).sum(1)
        )

    def combine(self, weights: Tensor) -> Tensor:
        """``sum_i w_i g_i``, shape [B, *F], in the representation's dtype."""
        if self._diag is not None:
            w = weights.to(device=self.device, dtype=torch.float64)
            e, weight = self._factors64()
            out = (e * w) @ weight
            return out.to(self.dtype).reshape(self.shape)
        if self._full is None:
            w = weights.to(device=self.device, dtype=torch.float64)
            coeff = torch.tensordot(w, self._jac.double(), dims=1)  # [B, O]
            return (coeff @ self._weight.double()).to(self.dtype).reshape(self.shape)
        flat = self._full.reshape(self.num_tasks, -1)
        return combine(weights.to(torch.float64), flat).reshape(self.shape)


def _no_hooks(*modules: nn.Module) -> bool:
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    from torch.nn.modules import module as module_mod

    return not getattr(module_mod, "_global_forward_hooks", None) and not getattr(
        module_mod, "_global_forward_pre_hooks", None
    )


def linear_heads_of(step: Any) -> nn.Linear | None:
    """The heads' ``nn.Linear`` when ``step.outputs`` is exactly ``linear(step.rep.flatten(1))``:
    the model's ``linear_heads()`` (its protocol) gives the heads, no forward hooks run on the
    model, the heads or the layer, same dtypes (no autocast), matching shapes. Else None."""
    model, rep, out = step.model, step.rep, step.outputs
    get = getattr(model, "linear_heads", None)
    heads = get() if callable(get) else None
    if heads is None:
        return None
    lin = heads.linear
    if type(lin).forward is not nn.Linear.forward or not _no_hooks(model, heads, lin):
        return None
    if not (isinstance(out, Tensor) and isinstance(rep, Tensor) and out.dim() == 2 and rep.dim() >= 1):
        return None
    if not out.requires_grad or out.shape[0] != rep.shape[0] or rep.shape[0] == 0:
        return None
    if tuple(lin.weight.shape) != (out.shape[1], rep[0].numel()):
        return None
    if not (out.dtype == rep.dtype == lin.weight.dtype):
        return None
    return lin


def loss_jacobian(losses: Tensor, outputs: Tensor) -> Tensor | None:
    """``J[i] = dL_i/d outputs`` ([T, *outputs.shape]), one batched call over the loss graph
    (a loop where vmap cannot run); None when the losses do not depend on ``outputs``."""
    if losses.dim() != 1 or losses.shape[0] == 0:
        return None
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    try:
        (jac,) = batched_vjp(losses, [outputs], eye, retain_graph=True, allow_unused=True)
    except RuntimeError:
        return None
    return jac


def _per_column_shapes(losses: Tensor, outputs: Tensor) -> bool:
    """Losses [T] (T >= 1) and outputs [B, T]: the shapes per-column losses have."""
    return losses.dim() == 1 and outputs.dim() == 2 and outputs.shape[1] == losses.shape[0] and losses.shape[0] > 0


def column_loss_grads(losses: Tensor, outputs: Tensor) -> Tensor | None:
    """``e[b, i] = dL_i/d outputs[b, i]`` [B, T] when loss i reads column i of ``outputs`` [B, T]
    only (the caller's promise, ``Step.column_losses``): then dL_i/d outputs is zero outside
    column i, and the gradient of sum_i L_i is every task's column at once (one backward pass
    through the losses' graph, instead of T). None when the shapes do not fit that promise."""
    if not _per_column_shapes(losses, outputs):
        return None
    (e,) = torch.autograd.grad(losses.sum(), outputs, retain_graph=True, allow_unused=True)
    return e if e is not None and e.dtype == outputs.dtype else None


def rep_task_grads(step: Any, general: Any = None) -> RepGrads:
    """Per-task gradients at ``step.rep`` (see the module docstring): through the linear heads
    by the chain rule when :func:`linear_heads_of` finds them, else ``general(losses, rep)``
    (default :func:`task_grads_at`)."""
    lin = linear_heads_of(step)
    if lin is not None and getattr(step, "column_losses", False):
        diag = column_loss_grads(step.losses, step.outputs)
        if diag is not None:
            return RepGrads(step.rep, weight=lin.weight.detach(), diag=diag, linear=lin)
    if lin is not None:
        jac = loss_jacobian(step.losses, step.outputs)
        if jac is not None and jac.dtype == step.rep.dtype:
            weight = lin.weight.detach()
            T, _, n_out = jac.shape
            if T == n_out and jac.device.type == "cpu":  # (the check reads the values: on a GPU it would synchronise)
                diag = jac.diagonal(dim1=0, dim2=2)  # [B, T]: dL_i/dO[b, i]
                if int(torch.count_nonzero(jac)) == int(torch.count_nonzero(diag)):
                    return RepGrads(step.rep, jac=jac, weight=weight, diag=diag)
            return RepGrads(step.rep, jac=jac, weight=weight)
    full = (general or task_grads_at)(step.losses, step.rep)
    return RepGrads(step.rep, full=full)


def backward_replacing_rep_grad(step: Any, combination: Any) -> bool:
    """One backward pass of ``sum_i L_i`` in which the gradient arriving at ``step.rep`` is
    replaced by ``combination(rep_grads)`` (a tensor of the representation's shape and dtype),
    ``rep_grads`` the step's factored :class:`RepGrads`; True when done, False (nothing done)
    unless the per-task gradients factor as ``g_i[b] = e[b, i] W_i`` (stock linear heads,
    per-column losses: :func:`rep_task_grads`'s first form).

    The same gradients as :func:`rep_task_grads`, then the heads' closed form and a second
    backward through the trunk (``e`` is the gradient of ``sum_i L_i`` at the logits, which
    this pass computes on its way; each head gets its own loss's gradient, which is what the
    plain pass gives it): one pass through the autograd engine instead of two."""
    lin = linear_heads_of(step)
    losses, outputs, rep = step.losses, step.outputs, step.rep
    if lin is None or not getattr(step, "column_losses", False) or not losses.requires_grad:
        return False
    if not _per_column_shapes(losses, outputs):
        return False
    seen: dict[str, Tensor] = {}

    def at_outputs(grad: Tensor) -> None:
        seen["e"] = grad

    def at_rep(grad: Tensor) -> Tensor:
        e = seen.get("e")
        if e is None:  # (cannot happen: rep is read through the heads only)
            raise RuntimeError("mtbench: the gradient at the heads' logits did not arrive before the representation's")
        seen["rep"] = grad
        out = combination(RepGrads(rep, weight=lin.weight.detach(), diag=e))
        return out.reshape(grad.shape).to(grad.dtype)

    handles = [outputs.register_hook(at_outputs), rep.register_hook(at_rep)]
    try:
        losses.sum().backward()
    finally:
        for h in handles:
            h.remove()
    if "rep" not in seen:
        raise RuntimeError("mtbench: no gradient reached the shared representation through the linear heads")
    return True

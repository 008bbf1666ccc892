"""Per-task gradients for the combiners, computed with as little work as the math allows.

Two places need the T per-task gradients g_i of the losses L_i:

* **at the shared representation A** (GradDrop, MGDA-UB, PCGrad and GradNorm at the
  representation): :func:`rep_task_grads` returns a :class:`RepGrads`. The general way is one
  batched autograd call over the heads (``is_grads_batched``; a loop of T calls where vmap
  cannot run). When the heads are the stock :class:`~mtbench.models.LinearHeads` (logits
  ``O = A W^T + b``) the chain rule gives ``dL_i/dA = (dL_i/dO) W`` exactly, so only the
  tiny Jacobian of the losses with respect to the logits is taken by autograd; and when each
  loss reads its own logit column only (per-attribute losses), ``dL_i/dA[b] = e[b, i] W_i``
  with ``e[b, i] = dL_i/dO[b, i]``: the T x B x D stack costs O(T B D) memory at most and the
  Gram matrix ``g_i . g_j = (sum_b e[b, i] e[b, j]) (W_i . W_j)`` never needs it. When the
  task promises per-column losses (``Task.column_losses``, passed on as ``Step.column_losses``),
  ``e`` is the gradient of ``sum_i L_i`` at the logits: one backward pass, no Jacobian at all.

* **at the shared parameters** (PCGrad and MGDA at ``level: params``):
  :class:`ParamTaskGrads` runs the T backward passes through the trunk (``chunk`` tasks per
  batched call) and keeps only what the combiners use: the float64 Gram matrix of the
  g_i and the ability to add any combination ``sum_i w_i g_i`` to the parameters' ``.grad``.
  Rows of the per-task gradient stack are held within a memory budget (beyond it, blocks of
  rows are recomputed: more backward passes, same Gram matrix). For a convolution or linear
  layer whose input has fewer positions N than its weight has columns K (the last ResNet
  stage), the per-task weight gradients ``dW_i = D_i^T X`` (D_i the task's gradient at the
  layer's output, N x C_out; X the layer's unfolded input, N x K) are never formed: their
  Gram entries are ``<dW_i, dW_j> = <D_i, (X X^T) D_j>`` and a combination is
  ``(sum_i w_i D_i)^T X``; the backward passes skip those weight gradients. This needs the
  layers' inputs and outputs, which forward hooks (:class:`LayerCapture`) keep; the combiner
  arms them before the first forward pass (``Combiner.prepare``), and decides at every step,
  from that step's shapes alone, which layers take the factored form.

A combiner holds a :class:`TaskGrads` (its options ``chunk_size`` and ``memory_budget_mb``,
its forward hooks, the layers that took the factored form at the last step) and asks it for
both. The model is read through its protocol (:class:`mtbench.models.multitask.MultiTaskNet`):
``trunk``, ``shared_parameters()``, ``head_parameters()``, ``linear_heads()``.

Every result here equals the plain computation up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.combiners.linalg import batched_vjp, combine, cross64, gram64

__all__ = [
    "TaskGrads",
    "RepGrads",
    "rep_task_grads",
    "backward_replacing_rep_grad",
    "column_loss_grads",
    "task_grads_at",
    "param_grad_stack",
    "shared_parameters",
    "default_chunk",
    "batched_grads",
    "LayerCapture",
    "ParamTaskGrads",
    "layer_input_matrix",
    "layer_output_matrix",
    "factored_layer",
    "factored_gram",
    "factored_cost",
    "captured_layers",
]

#: columns per float64 block of the factored layers' cross products (cache-sized: faster)
_CROSS_BLOCK = 1 << 13


#: the batched vector-Jacobian products of :mod:`mtbench.combiners.linalg` (one vmapped call,
#: a loop where vmap cannot run the backward)
batched_grads = batched_vjp


def shared_parameters(model: nn.Module) -> list[Tensor]:
    """The model's ``shared_parameters()``; every trainable parameter for a model without it."""
    if hasattr(model, "shared_parameters"):
        return model.shared_parameters()
    return [p for p in model.parameters() if p.requires_grad]


def default_chunk(value: Any, device: torch.device) -> int:
    """``chunk_size: null`` = 1 on a CPU (a loop is faster there), 8 on an accelerator."""
    return int(value) if value is not None else (1 if device.type == "cpu" else 8)


def task_grads_at(losses: Tensor, tensor: Tensor, retain_graph: bool = True) -> Tensor:
    """All T per-task gradients dL_i/d(tensor), shape [T, *tensor.shape]: one batched autograd
    call (vmap over the backward pass), a loop over tasks where vmap cannot run the backward."""
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    (grads,) = batched_vjp(losses, [tensor], eye, retain_graph=retain_graph)
    return grads


def param_grad_stack(step: Any, rep_grads: Tensor, params: list[Tensor], chunk_size: int = 8) -> Tensor:
    """Per-task gradients of the shared parameters, flattened and concatenated: [T, P].

    Task i's parameter gradient is the trunk's vector-Jacobian product with task i's gradient
    at the representation (``rep_grads[i]``, from :func:`task_grads_at`). ``chunk_size`` tasks
    go through the trunk's backward together (one vmapped call), which bounds the extra memory
    to ``chunk_size`` backward passes; ``chunk_size=1`` is a plain loop of backward passes (the
    faster choice on a CPU). Rows are written straight into the [T, P] result.
    """
    T = rep_grads.shape[0]
    width = sum(p.numel() for p in params)
    out = torch.empty((T, width), dtype=params[0].dtype, device=params[0].device)
    chunk = max(1, int(chunk_size))
    for start in range(0, T, chunk):
        part = rep_grads[start : start + chunk]
        grads = batched_vjp(step.rep, params, part, retain_graph=True)
        for r in range(part.shape[0]):
            torch.cat([g[r].reshape(-1) for g in grads], out=out[start + r])
    return out


# ----------------------------------------------------------------------------------------------
# at the representation
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# layers whose weight gradient factors as D^T X
# ----------------------------------------------------------------------------------------------


def factored_layer(module: nn.Module) -> bool:
    """A stock ``nn.Conv2d`` (one group, numeric zero padding) or ``nn.Linear``: its weight
    gradient is ``D^T X`` with X the unfolded input and D the gradient at its output."""
    if type(module).forward is nn.Linear.forward and isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def layer_input_matrix(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as an [N, K] matrix: N positions (batch x output pixels), K = the
    weight's columns (``weight.view(C_out, -1)``)."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [B * L, K]
    return x.reshape(-1, x.shape[-1])


def layer_output_matrix(module: nn.Module, grads: Tensor) -> Tensor:
    """Per-task gradients at the layer's output [T, *out.shape] as [T, N, C_out] (the same
    position order as :func:`layer_input_matrix`)."""
    T = grads.shape[0]
    if isinstance(module, nn.Conv2d):
        c = grads.shape[2]
        return grads.movedim(2, -1).reshape(T, -1, c)
    return grads.reshape(T, -1, grads.shape[-1])


def factored_cost(n: int, k: int, c: int, t: int) -> tuple[float, float]:
    """Multiply-adds of one layer's share of the per-task Gram matrix, (factored, plain), with
    float64 work counted twice. Plain: T weight gradients (N C K each, inside the backward
    passes) and their float64 Gram matrix (T^2 C K); factored: X X^T (N^2 K), (X X^T) D_j
    (T N^2 C) and the float64 pairs (T^2 N C)."""
    factored = n * n * k + t * n * n * c + 2 * t * t * n * c
    plain = t * n * c * k + 2 * t * t * c * k
    return float(factored), float(plain)


class LayerCapture:
    """Forward hooks keeping, for watched layers, the input and the output of their calls in a
    forward pass with gradients enabled (``take`` hands them over once and forgets them).

    A call whose input or output was modified in place after the layer returned (an
    ``nn.ReLU(inplace=True)`` right after it: the output then holds the activation, and a
    gradient taken at it is the activation's, not the layer's) is not handed over: the
    tensors' version counters tell."""

    def __init__(self) -> None:
        self._handles: dict[nn.Module, Any] = {}
        self._calls: dict[nn.Module, list[tuple[Tensor, Tensor, int, int]]] = {}

    def watch(self, modules: Iterable[nn.Module]) -> None:
        for m in modules:
            if m not in self._handles:
                self._handles[m] = m.register_forward_hook(self._hook)

    def watching(self, module: nn.Module) -> bool:
        return module in self._handles

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if (
            torch.is_grad_enabled()
            and isinstance(output, Tensor)
            and output.requires_grad
            and args
            and isinstance(args[0], Tensor)
        ):
            x = args[0].detach()  # (shares the input's version counter)
            self._calls.setdefault(module, []).append((x, output, x._version, output._version))

    def take(self, module: nn.Module) -> tuple[Tensor, Tensor] | None:
        """(input, output) of the module's one call since the last ``take``; None when it was
        called zero or several times, or when its input or output has been modified in place
        since (then the factored form does not apply)."""
        calls = self._calls.pop(module, [])
        if len(calls) != 1:
            return None
        x, out, x_version, out_version = calls[0]
        if x._version != x_version or out._version != out_version:
            return None
        return x, out

    def __deepcopy__(self, memo):  # a copied model must not feed this capture: start empty
        return LayerCapture()


def _uses(root: Any, targets: set) -> dict:
    """How many graph edges reach each node of ``targets`` from ``root`` (each node visited once)."""
    counts = {t: 0 for t in targets}
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if nxt in counts:
                counts[nxt] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts


def captured_layers(
    step: Any, capture: LayerCapture, modules: Sequence[nn.Module], select: Any = None
) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """The (module, input, output) of ``modules`` captured for this step whose weight enters the
    graph of ``step.rep`` exactly once (through that call); with ``select(module, input,
    output)``, only those it accepts (checked first: the graph is walked for them only). Every
    module's capture is taken (forgotten), selected or not."""
    found = []
    for m in modules:
        got = capture.take(m)
        if got is not None and (select is None or select(m, got[0], got[1])):
            found.append((m, got[0], got[1]))
    if not found or step.rep.grad_fn is None:
        return []
    nodes = {}
    for m, _, _ in found:
        try:
            nodes[m] = torch.autograd.graph.get_gradient_edge(m.weight).node
        except (RuntimeError, AttributeError):
            nodes[m] = None
    counts = _uses(step.rep.grad_fn, {n for n in nodes.values() if n is not None})
    return [(m, x, out) for m, x, out in found if nodes[m] is not None and counts.get(nodes[m]) == 1]


# ----------------------------------------------------------------------------------------------
# at the parameters
# ----------------------------------------------------------------------------------------------


def factored_gram(x: Tensor, d: Tensor, diagonal: bool = False) -> Tensor:
    """Gram matrix (float64) of the weight gradients ``dW_i = d_i^T x`` of one factored layer,
    from x [N, K] and d [T, N, C] without forming them: ``<dW_i, dW_j> = <d_i, (x x^T) d_j>``.
    ``diagonal``: only ``||dW_i||^2`` ([T]). On a CPU the two matrix products run in the
    gradients' dtype (sums over K and over N) and the final sums in float64 (for the diagonal,
    the sum over C in the gradients' dtype, over N in float64); elsewhere (no TF32) in float64."""
    T = d.shape[0]
    if x.device.type == "cpu":
        s = x @ x.T  # [N, N]
        sd = torch.matmul(s, d)  # [T, N, C]
    else:
        x64 = x.double()
        s = x64 @ x64.T
        sd = torch.matmul(s, d.double())
    if diagonal:  # products and the sum over channels in d's dtype, the sum over positions in float64
        return (d * sd).sum(2, dtype=d.dtype if x.device.type == "cpu" else torch.float64).double().sum(1)
    a, b = d.reshape(T, -1), sd.reshape(T, -1)
    g = torch.zeros(T, T, dtype=torch.float64, device=d.device)
    for s in range(0, a.shape[1], _CROSS_BLOCK):  # float64 in cache-sized column blocks
        g += a[:, s : s + _CROSS_BLOCK].double() @ b[:, s : s + _CROSS_BLOCK].double().T
    return 0.5 * (g + g.T)


class _Factored:
    """One factored layer: its unfolded input X [N, K] and the tasks' output gradients [T, N, C]."""

    def __init__(self, module: nn.Module, x: Tensor, out: Tensor, num_tasks: int):
        self.module = module
        self.weight = module.weight
        self.out = out
        self.x = layer_input_matrix(module, x)
        self.d = torch.empty((num_tasks, self.x.shape[0], self.weight.shape[0]), dtype=out.dtype, device=out.device)

    def gram(self) -> Tensor:
        return factored_gram(self.x, self.d)

    def combination(self, weights: Tensor) -> Tensor:
        """``sum_i w_i dW_i = (sum_i w_i D_i)^T X``, in the gradients' dtype."""
        w = weights.to(device=self.d.device, dtype=self.d.dtype)
        dw = torch.tensordot(w, self.d, dims=1)  # [N, C]
        return (dw.T @ self.x).view_as(self.weight)


class ParamTaskGrads:
    """Per-task gradients g_i = J^T u_i of the shared parameters (u_i the task's gradient at
    the representation, J the trunk's Jacobian), kept as their Gram matrix and combinations.

    Args:
        step: the training step (``step.rep`` must still hold its graph).
        cotangents: [T, *rep.shape] the u_i.
        params: the shared parameters (the g_i's coordinates, in this order).
        chunk: tasks per batched backward call (1: a plain loop).
        budget_bytes: memory for held rows of the per-task gradient stack (and the factored
            layers' output gradients); None: no limit. Fewer rows than tasks: the Gram matrix
            is built block by block, recomputing rows (more backward passes), and a combination
            costs one more backward pass.
        layers: (module, input, output) of factored layers captured for this step; their
            weights are then left out of the backward passes.
    """

    def __init__(
        self,
        step: Any,
        cotangents: Tensor,
        params: list[Tensor],
        chunk: int = 1,
        budget_bytes: int | None = None,
        layers: Sequence[tuple[nn.Module, Tensor, Tensor]] = (),
    ):
        self.step = step
        self.u = cotangents
        self.params = list(params)
        T = self.num_tasks = int(cotangents.shape[0])
        self.factored = [_Factored(m, x, out, T) for m, x, out in layers if any(p is m.weight for p in self.params)]
        factored_ids = {id(f.weight) for f in self.factored}
        self.direct = [p for p in self.params if id(p) not in factored_ids]
        self.sizes = [p.numel() for p in self.direct]
        width = sum(self.sizes)
        like = self.direct[0] if self.direct else cotangents
        row_bytes = max(1, width * like.element_size())
        extra = sum(f.d.numel() * f.d.element_size() for f in self.factored)
        if budget_bytes is None:
            rows = T
        else:
            rows = int(max(0, budget_bytes - extra) // row_bytes)
            rows = max(2, rows) if T > 1 else 1  # the blocked Gram needs a block row and one more
        self.rows = min(T, rows)
        self.chunk = max(1, min(int(chunk), self.rows if self.rows >= T else max(1, self.rows - 1)))
        self.backward_passes = 0
        self.stack: Tensor | None = None
        self._gram = self._build(width, like)

    # -- backward passes ---------------------------------------------------------------------
    def _rows(self, start: int, stop: int, out: Tensor | None, chunk: int) -> None:
        """Backward passes of tasks start..stop-1 (``chunk`` per batched call): the direct
        parameters' gradients into the rows of ``out``, the factored layers' output gradients
        into their buffers."""
        inputs = self.direct + [f.out for f in self.factored]
        for s in range(start, stop, chunk):
            e = min(stop, s + chunk)
            grads = batched_vjp(self.step.rep, inputs, self.u[s:e], retain_graph=True)
            self.backward_passes += e - s
            nd = len(self.direct)
            if out is not None and nd:
                for r in range(e - s):
                    torch.cat([g[r].reshape(-1) for g in grads[:nd]], out=out[s - start + r])
            for f, g in zip(self.factored, grads[nd:]):
                f.d[s:e] = layer_output_matrix(f.module, g)

    def _build(self, width: int, like: Tensor) -> Tensor:
        T = self.num_tasks
        gram = torch.zeros(T, T, dtype=torch.float64, device=like.device)
        if self.rows >= T:
            stack = torch.empty((T, width), dtype=like.dtype, device=like.device)
            self._rows(0, T, stack, self.chunk)
            if width:
                gram += gram64(stack)
            self.stack = stack
        else:
            # blocks of m rows: their own Gram, then every later task once against the block
            m = max(1, self.rows - 1)
            block = torch.empty((m, width), dtype=like.dtype, device=like.device)
            row = torch.empty((1, width), dtype=like.dtype, device=like.device)
            for a in range(0, T, m):
                b = min(T, a + m)
                self._rows(a, b, block[: b - a], self.chunk)
                if width:
                    gram[a:b, a:b] += gram64(block[: b - a])
                for j in range(b, T):
                    self._rows(j, j + 1, row, 1)
                    if width:
                        cross = cross64(block[: b - a], row[0])
                        gram[a:b, j] += cross
                        gram[j, a:b] += cross
        for f in self.factored:
            gram += f.gram().to(gram.device)
        return gram

    # -- what the combiners use --------------------------------------------------------------
    def gram(self) -> Tensor:
        """``G[i, j] = g_i . g_j`` (float64, on the parameters' device)."""
        return self._gram

    def add_combination(self, weights: Tensor) -> None:
        """Accumulate ``sum_i w_i g_i`` into the parameters' ``.grad``."""
        w64 = weights.detach().to(dtype=torch.float64)
        if self.stack is not None:
            if self.direct:
                flat = combine(w64.to(self.stack.device), self.stack)
                offset = 0
                for p, n in zip(self.direct, self.sizes):
                    g = flat[offset : offset + n].view_as(p)
                    p.grad = g.clone() if p.grad is None else p.grad.add_(g)
                    offset += n
            for f in self.factored:
                g = f.combination(w64)
                f.weight.grad = g if f.weight.grad is None else f.weight.grad.add_(g)
            return
        # the rows were not kept: one more backward pass with sum_i w_i u_i
        u = torch.tensordot(w64.to(self.u.device), self.u.double(), dims=1).to(self.u.dtype)
        torch.autograd.backward(self.step.rep, u, inputs=self.params, retain_graph=True)
        self.backward_passes += 1


def budget_bytes(memory_budget_mb: Any) -> int | None:
    if memory_budget_mb is None:
        return None
    return int(float(memory_budget_mb) * 2**20)


class TaskGrads:
    """The per-task gradients one combiner takes: at the representation (:meth:`at_representation`)
    and at the shared parameters (:meth:`at_params`), with what is kept from step to step to take
    them fast (the forward hooks of the trunk's factorable layers).

    Args:
        chunk_size: tasks per batched backward call at the parameters (None:
            :func:`default_chunk`).
        memory_budget_mb: memory for the rows of the per-task gradient stack held at once
            (None: all T rows); see :class:`ParamTaskGrads`.
    """

    def __init__(self, chunk_size: int | None = None, memory_budget_mb: float | None = None):
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        #: the forward hooks keeping the inputs and outputs of the factorable layers
        self.capture = LayerCapture()
        #: the layers whose Gram entries took the factored form at the last :meth:`at_params`
        self.last_factored_layers: list[nn.Module] = []
        self._trunk: nn.Module | None = None
        self._candidates: list[nn.Module] = []

    def prepare(self, model: nn.Module) -> None:
        """Arm the forward hooks of the trunk's layers that may take the factored form at the
        parameters (stock convolution and linear layers with shared weights); once per trunk."""
        trunk = getattr(model, "trunk", model)
        if self._trunk is trunk:
            return
        shared = {id(p) for p in shared_parameters(model)}
        mods = [
            m
            for m in trunk.modules()
            if factored_layer(m) and getattr(m, "weight", None) is not None and id(m.weight) in shared
        ]
        self._trunk, self._candidates = trunk, mods
        self.capture.watch(mods)

    @staticmethod
    def at_representation(step: Any) -> RepGrads:
        """The T per-task gradients dL_i/d(rep) (:func:`rep_task_grads`)."""
        return rep_task_grads(step)

    def at_params(self, step: Any, rep_grads: RepGrads) -> ParamTaskGrads:
        """Per-task gradients of the shared parameters as a :class:`ParamTaskGrads` (their
        float64 Gram matrix and any combination sum_i w_i g_i added into ``.grad``).

        The trunk's convolution and linear layers whose weight gradient is cheaper through
        their input and output than explicitly (few positions, wide weights: ResNet's last
        stage; or a small batch) enter the Gram matrix in that factored form: same numbers up
        to rounding. Which layers do is decided at every call from that call's shapes alone (a
        smaller last batch may choose differently), never from earlier calls, so a resumed run
        takes the same path as an uninterrupted one. The hooks are armed by :meth:`prepare`
        (the combiner's ``prepare``, before the first forward pass); without it, at the first
        call, which then takes the plain path.
        """
        model = step.model
        params = shared_parameters(model)
        self.prepare(model)
        T = rep_grads.num_tasks

        def pays(m: nn.Module, x: Tensor, out: Tensor) -> bool:
            c = m.weight.shape[0]
            n = out.numel() // (out.shape[1] if isinstance(m, nn.Conv2d) else out.shape[-1])
            k = m.weight[0].numel()
            fac, plain = factored_cost(n, k, c, T)
            return fac < plain

        layers = captured_layers(step, self.capture, self._candidates, select=pays)
        self.last_factored_layers = [m for m, _, _ in layers]
        chunk = default_chunk(self.chunk_size, step.rep.device)
        return ParamTaskGrads(
            step, rep_grads.full(), params, chunk=chunk, budget_bytes=budget_bytes(self.memory_budget_mb), layers=layers
        )

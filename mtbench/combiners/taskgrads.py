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
  Gram matrix ``g_i . g_j = (sum_b e[b, i] e[b, j]) (W_i . W_j)`` never needs it.

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

Every result here equals the plain computation up to floating-point rounding.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RepGrads",
    "rep_task_grads",
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

#: columns per float64 block of a Gram product (as ``functional._gram64``)
_BLOCK_COLUMNS = 1 << 15
#: columns per float64 block of the factored layers' cross products (cache-sized: faster)
_CROSS_BLOCK = 1 << 13


def gram64(flat: Tensor) -> Tensor:
    """``flat @ flat.T`` of a [T, D] stack in float64, block by block (bounded extra memory)."""
    from mtbench.combiners.functional import _gram64

    return _gram64(flat)


def batched_grads(outputs: Tensor, inputs: Sequence[Tensor], cotangents: Tensor, retain_graph: bool = True) -> list[Tensor]:
    """VJPs of ``outputs`` with each of the ``cotangents`` ([C, *outputs.shape]): one vmapped
    autograd call, or a loop where vmap cannot run the backward. Returns one [C, *input.shape]
    tensor per input."""
    n = cotangents.shape[0]
    if n > 1:
        try:
            return list(torch.autograd.grad(outputs, list(inputs), grad_outputs=cotangents, is_grads_batched=True, retain_graph=retain_graph))
        except RuntimeError:
            pass  # vmap cannot run this backward: one at a time
    rows = [torch.autograd.grad(outputs, list(inputs), grad_outputs=cotangents[i], retain_graph=retain_graph or i < n - 1) for i in range(n)]
    if n == 1:
        return [g.unsqueeze(0) for g in rows[0]]
    return [torch.stack([r[k] for r in rows]) for k in range(len(inputs))]


# ----------------------------------------------------------------------------------------------
# at the representation
# ----------------------------------------------------------------------------------------------


class RepGrads:
    """The T per-task gradients g_i = dL_i/dA at the shared representation A (shape [B, *F]).

    Either held as a stack [T, B, *F] (``full``) or factored through linear heads with weight
    W [O, D] (D = prod F): ``g_i = J_i W`` with ``J_i = dL_i/dO`` [B, O], or, when each loss
    reads only its own logit column, ``g_i[b] = e[b, i] W_i``.
    """

    def __init__(self, rep: Tensor, *, full: Tensor | None = None, jac: Tensor | None = None, weight: Tensor | None = None, diag: Tensor | None = None):
        self.shape = tuple(rep.shape)
        self.dtype = rep.dtype
        self.device = rep.device
        self._full = full
        self._jac = jac  # [T, B, O]
        self._weight = weight  # [O, D], detached
        self._diag = diag  # [B, T]
        if full is not None:
            self.num_tasks = int(full.shape[0])
        elif jac is not None:
            self.num_tasks = int(jac.shape[0])
        else:
            raise ValueError("RepGrads needs a full stack or a factored form")

    @property
    def factored(self) -> bool:
        return self._full is None

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
            e = self._diag.double()
            w = self._weight.double()
            return (e.T @ e) * (w @ w.T)
        return gram64(self.full().reshape(self.num_tasks, -1))

    def sq_norms(self) -> Tensor:
        """``||g_i||^2``, float64 [T]."""
        if self._diag is not None:
            return self._diag.double().pow(2).sum(0) * self._weight.double().pow(2).sum(1)
        return self.gram().diagonal().clone() if self.factored else self._full.reshape(self.num_tasks, -1).double().pow(2).sum(1)

    def combine(self, weights: Tensor) -> Tensor:
        """``sum_i w_i g_i``, shape [B, *F], in the representation's dtype."""
        if self._diag is not None:
            w = weights.to(device=self.device, dtype=torch.float64)
            out = (self._diag.double() * w) @ self._weight.double()
            return out.to(self.dtype).reshape(self.shape)
        if self._full is None:
            w = weights.to(device=self.device, dtype=torch.float64)
            coeff = torch.tensordot(w, self._jac.double(), dims=1)  # [B, O]
            return (coeff @ self._weight.double()).to(self.dtype).reshape(self.shape)
        from mtbench.combiners.functional import _combine

        flat = self._full.reshape(self.num_tasks, -1)
        return _combine(weights.to(torch.float64), flat).reshape(self.shape)


def _no_hooks(*modules: nn.Module) -> bool:
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    from torch.nn.modules import module as module_mod

    return not getattr(module_mod, "_global_forward_hooks", None) and not getattr(module_mod, "_global_forward_pre_hooks", None)


def linear_heads_of(step: Any) -> nn.Linear | None:
    """The heads' ``nn.Linear`` when ``step.outputs`` is exactly ``linear(step.rep.flatten(1))``:
    the stock ``MultiTaskModel`` and ``LinearHeads`` (no overridden forward, no hooks), same
    dtypes (no autocast), matching shapes. Else None."""
    from mtbench.models.multitask import LinearHeads, MultiTaskModel

    model, rep, out = step.model, step.rep, step.outputs
    if not isinstance(model, MultiTaskModel) or type(model).forward is not MultiTaskModel.forward:
        return None
    heads = model.heads
    if not isinstance(heads, LinearHeads) or type(heads).forward is not LinearHeads.forward:
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
    T = losses.shape[0]
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    try:
        (jac,) = torch.autograd.grad(losses, outputs, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True)
    except RuntimeError:
        try:
            rows = [torch.autograd.grad(losses[i], outputs, retain_graph=True, allow_unused=True)[0] for i in range(T)]
        except RuntimeError:
            return None
        if any(r is None for r in rows):
            rows = [torch.zeros_like(outputs) if r is None else r for r in rows]
        jac = torch.stack(rows)
    if jac is None:
        return None
    return jac


def rep_task_grads(step: Any, general: Any = None) -> RepGrads:
    """Per-task gradients at ``step.rep`` (see the module docstring). ``general(losses, rep)``
    computes the stack where no factored form applies (default: one batched autograd call)."""
    lin = linear_heads_of(step)
    if lin is not None:
        jac = loss_jacobian(step.losses, step.outputs)
        if jac is not None and jac.dtype == step.rep.dtype:
            weight = lin.weight.detach()
            T, _, O = jac.shape
            if T == O and jac.device.type == "cpu":  # (the check reads the values: on a GPU it would synchronise)
                diag = jac.diagonal(dim1=0, dim2=2)  # [B, T]: dL_i/dO[b, i]
                if int(torch.count_nonzero(jac)) == int(torch.count_nonzero(diag)):
                    return RepGrads(step.rep, jac=jac, weight=weight, diag=diag)
            return RepGrads(step.rep, jac=jac, weight=weight)
    if general is None:
        (full,) = batched_grads(step.losses, [step.rep], torch.eye(step.losses.shape[0], dtype=step.losses.dtype, device=step.losses.device))
    else:
        full = general(step.losses, step.rep)
    return RepGrads(step.rep, full=full)


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
    forward pass with gradients enabled (``take`` hands them over once and forgets them)."""

    def __init__(self) -> None:
        self._handles: dict[nn.Module, Any] = {}
        self._calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def watch(self, modules: Iterable[nn.Module]) -> None:
        for m in modules:
            if m not in self._handles:
                self._handles[m] = m.register_forward_hook(self._hook)

    def unwatch(self, module: nn.Module) -> None:
        handle = self._handles.pop(module, None)
        if handle is not None:
            handle.remove()
        self._calls.pop(module, None)

    def watching(self, module: nn.Module) -> bool:
        return module in self._handles

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad and args and isinstance(args[0], Tensor):
            self._calls.setdefault(module, []).append((args[0].detach(), output))

    def take(self, module: nn.Module) -> tuple[Tensor, Tensor] | None:
        """(input, output) of the module's one call since the last ``take``; None when it was
        called zero or several times (then the factored form does not apply)."""
        calls = self._calls.pop(module, [])
        return calls[0] if len(calls) == 1 else None

    def clear(self) -> None:
        self._calls.clear()

    def remove(self) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        self._calls.clear()

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


def captured_layers(step: Any, capture: LayerCapture, modules: Sequence[nn.Module], select: Any = None) -> list[tuple[nn.Module, Tensor, Tensor]]:
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
            grads = batched_grads(self.step.rep, inputs, self.u[s:e], retain_graph=True)
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
                        cross = _cross64(block[: b - a], row[0])
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
        from mtbench.combiners.functional import _combine

        w64 = weights.detach().to(dtype=torch.float64)
        if self.stack is not None:
            if self.direct:
                flat = _combine(w64.to(self.stack.device), self.stack)
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


def _cross64(block: Tensor, row: Tensor) -> Tensor:
    """``block @ row`` ([m, D] x [D]) in float64, block by block."""
    out = torch.zeros(block.shape[0], dtype=torch.float64, device=block.device)
    if block.dtype == torch.float64:
        return block @ row
    for s in range(0, block.shape[1], _BLOCK_COLUMNS):
        out += block[:, s : s + _BLOCK_COLUMNS].double() @ row[s : s + _BLOCK_COLUMNS].double()
    return out


def budget_bytes(memory_budget_mb: Any) -> int | None:
    if memory_budget_mb is None:
        return None
    return int(float(memory_budget_mb) * 2**20)


def is_finite_number(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False

"""Per-task gradients for the combiners, computed with as little work as the math allows.

At the shared representation (GradDrop, MGDA-UB, PCGrad and GradNorm there):
:func:`rep_task_grads` (:mod:`mtbench.combiners.rep_grads`). At the shared parameters (PCGrad and
MGDA at ``level: params``): :class:`ParamTaskGrads` runs the T backward passes through the trunk
(``chunk`` tasks per batched call) and keeps the float64 Gram matrix of the g_i and the ability
to add any combination ``sum_i w_i g_i`` to ``.grad``; rows are held within a memory budget
(beyond it, blocks of rows are recomputed), and layers with few positions and wide weights enter
in factored form (:mod:`mtbench.combiners.factored`). A combiner holds a :class:`TaskGrads` and
asks it for both; this module re-exports the names of the other two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtbench.combiners.factored import (
    LayerCapture,
    _Factored,
    captured_layers,
    factored_cost,
    factored_gram,
    factored_layer,
    layer_input_matrix,
    layer_output_matrix,
)
from mtbench.combiners.linalg import add_flat_grads, batched_vjp, combine, cross64, gram64
from mtbench.combiners.rep_grads import (
    RepGrads,
    backward_replacing_rep_grad,
    column_loss_grads,
    linear_heads_of,
    loss_jacobian,
    rep_task_grads,
    task_grads_at,
)

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
    "linear_heads_of",
    "loss_jacobian",
    "budget_bytes",
]

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
                add_flat_grads(self.direct, combine(w64.to(self.stack.device), self.stack))
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

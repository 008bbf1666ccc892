"""Layers whose per-task weight gradient factors as ``dW_i = D_i^T X``: a convolution or linear
layer whose input has fewer positions N than its weight has columns K (the last ResNet stage).

D_i is task i's gradient at the layer's output (N x C_out), X the layer's unfolded input
(N x K). The dW_i are never formed: their Gram entries are ``<D_i, (X X^T) D_j>``
(:func:`factored_gram`) and a combination is ``(sum_i w_i D_i)^T X``. Forward hooks
(:class:`LayerCapture`) keep the layers' inputs and outputs; :func:`factored_cost` decides from
one step's shapes whether a layer takes the factored form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: columns per float64 block of the factored layers' cross products (cache-sized: faster)
_CROSS_BLOCK = 1 << 13


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

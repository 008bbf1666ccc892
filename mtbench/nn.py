"""GradDrop as a layer for any network (docs/your-network/layer.md).

    drop = mtbench.nn.GradDrop(leak=0.0)
    rep = backbone(images)                      # the shared representation A, [B, *F]
    views = drop(rep, num_tasks=len(heads))     # T views of rep, no copy
    losses = [loss_fn(head(v), y[:, i]) for i, (head, v) in enumerate(zip(heads, views))]
    sum(losses).backward()                      # one ordinary backward pass

Forward, the layer is the identity. Backward, it receives the T gradients dL_i/dA that arrive at
its views (from one ordinary backward: no per-task passes, no vmap) and hands their GradDrop
combination (:func:`mtbench.combiners.functional.graddrop`, ``A`` as the batch-separated rule's
activation) to whatever produced ``A``; an unused view contributes zero. The heads get their own
losses' gradients, so a network with this layer trains exactly as ``mtbench combiner=graddrop``.
Under DDP, ``process_group`` and the same ``generator`` seed on every replica make the masks
those of one process on the whole batch; without it each replica masks its own batch. Views
are views: an in-place first layer on them is refused by autograd.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from mtbench.combiners.functional import GRADDROP_F, _leak_per_task, graddrop, random_graddrop

__all__ = ["GradDrop", "RandomGradDrop"]

LeakLike = Union[float, Sequence[float], Tensor]  # noqa: UP007 - a runtime alias, kept for Python 3.10


class _SignDropFunction(torch.autograd.Function):
    """T identity views of ``A`` forward; GradDrop's combination of their gradients backward."""

    @staticmethod
    def forward(ctx: Any, layer: _GradDropBase, activation: Tensor, num_tasks: int) -> tuple[Tensor, ...]:
        ctx.layer = layer
        ctx.save_for_backward(activation)
        ctx.set_materialize_grads(True)  # a view no loss uses arrives as zeros
        return tuple(activation.view_as(activation) for _ in range(num_tasks))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, Tensor, None]:
        (activation,) = ctx.saved_tensors
        stacked = torch.stack(grads)
        activation = activation.detach() if ctx.layer.batch_separated else None
        group = ctx.layer.process_group
        if group is None:
            return None, ctx.layer.combine(stacked, activation), None
        # DDP averages: the arriving gradients are N times this replica's share of the global
        # batch's; the rule runs on the share (its eps, its sums) and the result is scaled back
        n = torch.distributed.get_world_size(group)
        return None, ctx.layer.combine(stacked / n, activation) * n, None


@torch.compiler.disable
def _apply(layer: _GradDropBase, activation: Tensor, num_tasks: int) -> tuple[Tensor, ...]:
    # outside any compiled graph: the masks need host-side checks that dynamo would break on
    return _SignDropFunction.apply(layer, activation, num_tasks)


class _GradDropBase(nn.Module):
    """Options and checks shared by :class:`GradDrop` and :class:`RandomGradDrop`."""

    def __init__(
        self,
        leak: LeakLike = 0.0,
        batch_separated: bool = True,
        renormalize: bool = False,
        eps: float = 1e-7,
        generator: torch.Generator | None = None,
        process_group: Any = None,
    ):
        super().__init__()
        if isinstance(leak, Tensor):
            leak = leak.tolist()
        if isinstance(leak, (list, tuple)):  # one per task: the length is checked against num_tasks
            _leak_per_task(list(leak), len(leak))
            self.leak: float | list[float] = [float(v) for v in leak]
        else:
            _leak_per_task(0.0 if leak is None else leak, 1)
            self.leak = 0.0 if leak is None else float(leak)
        if not isinstance(batch_separated, bool):
            raise ValueError(f"batch_separated must be true or false; got {batch_separated!r}")
        if not isinstance(renormalize, bool):
            raise ValueError(f"renormalize must be true or false; got {renormalize!r}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < float(eps) < float("inf")):
            raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.batch_separated = batch_separated
        self.renormalize = renormalize
        self.eps = float(eps)
        self.generator = generator
        self.process_group = process_group

    def forward(self, activation: Tensor, num_tasks: int) -> tuple[Tensor, ...]:
        """``num_tasks`` views of ``activation`` (each equal to it), one per task's head."""
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1; got {num_tasks!r}")
        if not isinstance(activation, Tensor):
            raise ValueError(f"activation must be a tensor; got {type(activation).__name__}")
        if not activation.requires_grad:
            raise ValueError(
                "activation does not require grad: GradDrop acts on the gradient flowing into it; pass the trunk's "
                "output (computed with grad enabled), not a detached tensor"
            )
        if self.batch_separated and activation.dim() < 2:
            raise ValueError(
                f"activation must be [batch, *features] with batch_separated=True; got shape {tuple(activation.shape)}"
            )
        if isinstance(self.leak, list) and len(self.leak) != num_tasks:
            raise ValueError(
                f"leak has {len(self.leak)} values but num_tasks is {num_tasks}; give one number or one per task"
            )
        return _apply(self, activation, int(num_tasks))

    def combine(self, grads: Tensor, activation: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"leak={self.leak}, batch_separated={self.batch_separated}, renormalize={self.renormalize}, eps={self.eps:g}"


class GradDrop(_GradDropBase):
    """Gradient Sign Dropout (Chen et al., NeurIPS 2020) as a layer: ``views = layer(A, T)``.

    Args:
        leak: the paper's leak ``l_i`` in [0, 1]: one number for every task or one per task;
            task i's gradient passes with weight ``l_i + (1 - l_i) M_i`` (1: untouched).
        f: the map of the sign purity to the keep-positive probability: ``"identity"`` (the
            paper's), ``"linear"`` (``0.5 + k (P - 0.5)``) or ``"sigmoid"`` (``sigmoid(4k(P - 0.5))``).
        k: the slope of ``f`` (a finite number > 0; unused by ``"identity"``).
        batch_separated: the paper's rule for batched inputs (one mask per feature for the
            whole batch, from ``sum_b sign(A_b) dL_i/dA_b``); False: one mask per element.
        renormalize: rescale the combined gradient to the norm of the plain sum.
        eps: added to the purity's denominator (all-zero positions get P = 1/2).
        generator: where the uniform draws come from (None: torch's global generator); on
            the device of ``A``.
        process_group: under DistributedDataParallel, the replicas' group (see the module's
            docstring): the statistics are the global batch's. None: one process.
    """

    def __init__(
        self,
        leak: LeakLike = 0.0,
        f: str = "identity",
        k: float = 1.0,
        batch_separated: bool = True,
        renormalize: bool = False,
        eps: float = 1e-7,
        generator: torch.Generator | None = None,
        process_group: Any = None,
    ):
        super().__init__(leak, batch_separated, renormalize, eps, generator, process_group)
        if not isinstance(f, str) or f not in GRADDROP_F:
            raise ValueError(f"f must be one of {', '.join(GRADDROP_F)}; got {f!r}")
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not (0 < float(k) < float("inf")):
            raise ValueError(f"k must be a finite number > 0; got {k!r}")
        self.f = f
        self.k = float(k)

    def combine(self, grads: Tensor, activation: Tensor | None) -> Tensor:
        """GradDrop's combination of the per-task gradients ``grads`` [T, *A.shape]."""
        return graddrop(
            grads,
            activation,
            leak=self.leak,
            f=self.f,
            k=self.k,
            generator=self.generator,
            eps=self.eps,
            renormalize=self.renormalize,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        return f"f={self.f!r}, k={self.k:g}, " + super().extra_repr()


class RandomGradDrop(_GradDropBase):
    """GradDrop with the sign chosen by a fair coin (the paper's random-GradDrop control):
    ``f(P) = 1/2`` whatever the gradients. Same options as :class:`GradDrop` but ``f``, ``k``."""

    def combine(self, grads: Tensor, activation: Tensor | None) -> Tensor:
        """Random GradDrop's combination of the per-task gradients ``grads`` [T, *A.shape]."""
        return random_graddrop(
            grads,
            activation,
            leak=self.leak,
            generator=self.generator,
            eps=self.eps,
            renormalize=self.renormalize,
            process_group=self.process_group,
        )

"""Any combiner in your own training loop: :func:`backward` (exported as ``mtbench.backward``).

    import mtbench

    rep = backbone(images)                                   # the shared representation
    losses = [loss_fn(head(rep), y[:, i]) for i, head in enumerate(heads)]
    optimizer.zero_grad()
    weights = mtbench.backward(losses, rep, "mgda")          # instead of sum(losses).backward()
    optimizer.step()

The combiner is the same object as in ``mtbench``'s trainer, with the same math: a
representation-level combiner (GradDrop, PCGrad or MGDA at ``level: representation``, ...)
combines the per-task gradients at ``features`` and pushes the result through whatever produced
``features``; a parameter-level one (PCGrad's and MGDA's ``level: params``) works on the
per-task gradients of ``shared_params``; every head's parameters receive their own loss's
gradient, as in the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtbench.combiners import COMBINERS, Combiner, Step

__all__ = ["backward"]


class _Model(nn.Module):
    """What a combiner reads of a model (``mtbench.models.multitask.MultiTaskNet``), built from
    parameter lists: no linear heads (the per-task gradients take the general autograd path)."""

    def __init__(self, shared: list[Tensor], heads: list[Tensor], trunk: nn.Module | None):
        super().__init__()
        self._shared = shared
        self._heads = heads
        self.trunk = trunk if trunk is not None else nn.Module()

    def shared_parameters(self) -> list[Tensor]:
        return list(self._shared)

    def head_parameters(self) -> list[Tensor]:
        return list(self._heads)

    def linear_heads(self) -> None:
        return None

    def parameters(self, recurse: bool = True) -> Iterable[Tensor]:  # type: ignore[override]
        return iter(self._shared + self._heads)


def _walk(roots: Sequence[Any], stop: Any) -> tuple[list[Tensor], bool]:
    """The leaf tensors requiring grad that the graph of ``roots`` reaches without passing
    through the node ``stop``, in first-seen order, and whether ``stop`` was reached."""
    seen: set[Any] = set()
    leaves: list[Tensor] = []
    reached = False
    stack = [r for r in reversed(roots) if r is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node is stop:
            reached = True
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            if variable.requires_grad:
                leaves.append(variable)
            continue
        stack.extend(nxt for nxt, _ in reversed(node.next_functions) if nxt is not None)
    return leaves, reached


def _node(t: Tensor) -> Any:
    """The autograd node that produces ``t`` (its AccumulateGrad node for a leaf)."""
    if t.grad_fn is not None:
        return t.grad_fn
    return t.view_as(t).grad_fn.next_functions[0][0]


def _check_each_loss(losses: Any, stacked: Tensor, stop: Any) -> None:
    """One line naming the first loss that does not depend on ``features`` (a constant, a
    detached tensor, a loss of other inputs): its task would get no gradient, silently."""
    if isinstance(losses, Tensor):
        node = losses.grad_fn
        if node is None or type(node).__name__ not in ("StackBackward0", "CatBackward0"):
            return  # one tensor from elsewhere: checked as a whole
        nodes = [nxt for nxt, _ in node.next_functions]
        if len(nodes) != stacked.numel():
            return
        items = [(i, n) for i, n in enumerate(nodes)]
    else:
        items = [
            (i, x.grad_fn if x.grad_fn is not None else (_node(x) if x.requires_grad else None))
            for i, x in enumerate(losses)
        ]
    bad = []
    for i, node in items:
        if node is None:
            bad.append((i, "a constant or a detached tensor"))
        elif not _walk([node], stop)[1]:
            bad.append((i, "computed from other tensors only"))
    if bad and len(bad) < len(items):  # (none depends on them: the caller's one-line check)
        i, why = bad[0]
        raise ValueError(
            f"losses[{i}] does not depend on features ({why}): its task would get no gradient; "
            "compute every task's loss from the features passed"
        )


def _combiner(combiner: Any, num_tasks: int) -> Combiner:
    if isinstance(combiner, Combiner):
        if combiner.num_tasks != num_tasks:
            raise ValueError(f"combiner was built for {combiner.num_tasks} tasks but {num_tasks} losses were given")
        return combiner
    if not isinstance(combiner, str) or combiner not in COMBINERS:
        raise ValueError(f"combiner must be a Combiner instance or one of {', '.join(COMBINERS)}; got {combiner!r}")
    cls = COMBINERS[combiner]
    if cls.state_dict is not Combiner.state_dict and not cls.warm_start_state:
        raise ValueError(
            f"combiner {combiner!r} keeps state across steps: build it once, "
            f"c = mtbench.combiners.COMBINERS[{combiner!r}]({num_tasks}), and pass c at every step"
        )
    options = {"leak": 0.0} if "leak" in cls.options else {}
    return cls(num_tasks, **options)


def backward(
    losses: Sequence[Tensor] | Tensor,
    features: Tensor,
    combiner: str | Combiner,
    *,
    shared_params: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    cpu_generator: torch.Generator | None = None,
    trunk: nn.Module | None = None,
    process_group: Any = None,
    second_losses: Sequence[Tensor] | Tensor | None = None,
    second_features: Tensor | None = None,
) -> dict[str, float]:
    """Combine the task losses' gradients with ``combiner`` and leave them in ``.grad``.

    Args:
        losses: the T task losses (a sequence of scalars or a [T] tensor), all computed from
            ``features``.
        features: the shared representation the task heads read ([B, *F]).
        combiner: a registered name (``"graddrop"``, ``"pcgrad"``, ``"mgda"``, ...: its default
            options) or a combiner instance with its options
            (``mtbench.combiners.COMBINERS["mgda"](T, level="params")``). A combiner with state
            across steps (GradNorm's learned weights) must be an instance kept by the caller.
        shared_params: the parameters that parameter-level combiners take per-task gradients
            of (default: every tensor upstream of ``features`` that requires grad).
        generator: random draws on the device (GradDrop's uniform draws).
        cpu_generator: random draws on the host (PCGrad's task orders); default ``generator``
            when that is a CPU generator, else torch's global generator.
        trunk: the module that produced ``features``, when a combiner needs its layers
            (GradNorm's ``grad_at: last_shared``; the factored fast path at ``level: params``).
        process_group: under DistributedDataParallel, the group of the ranks that each hold an
            equal slice of the batch (``torch.distributed.group.WORLD``, or a group of its own).
            The losses are then this rank's (means over its slice) and ``.grad`` gets, on every
            rank, the gradient one process computes on the whole batch: the combiner sends
            what it needs (the losses, the Gram matrix, GradDrop's batch sums; see
            ``docs/reference/ddp-communication.md``) and sums the gradients itself, so the
            model's own DDP gradient sync must be off for this step (``with ddp_model.no_sync():``
            around the forward pass and this call, or a model not wrapped in DDP). Every rank
            passes generators seeded alike. None: one process.
        second_losses: the T task losses of a second, independent mini-batch of the same model
            (SDMGrad, MoDo: their weights come from the two batches' per-task gradients); the
            shared and head parameters then get the gradient of the mean of both batches'
            losses. Required by those combiners, refused by the others.
        second_features: the second batch's shared representation (optional: its per-task
            gradients then go through it, as the first batch's do; without it, straight from
            ``second_losses`` to ``shared_params``).

    Returns:
        The combiner's diagnostics (``combiner.log_values()``, e.g. GradNorm's or MGDA's
        weights), for logging.

    Raises:
        ValueError: one line naming the argument: no losses, losses that do not depend on
            ``features``, a ``features`` that does not require grad, an unknown combiner name,
            or a combiner that needs more than this (the input gradient penalty needs the inputs).
    """
    if isinstance(losses, Tensor):
        stacked = losses.reshape(-1) if losses.dim() <= 1 else None
        if stacked is None:
            raise ValueError(f"losses must be a sequence of scalars or a [T] tensor; got shape {tuple(losses.shape)}")
    else:
        items = list(losses)
        if not items or not all(isinstance(x, Tensor) and x.numel() == 1 for x in items):
            raise ValueError("losses must be a non-empty sequence of scalar tensors (one per task) or a [T] tensor")
        stacked = torch.stack([x.reshape(()) for x in items])
    if stacked.numel() < 1:
        raise ValueError("losses is empty: give one loss per task")
    if not isinstance(features, Tensor) or not features.requires_grad:
        raise ValueError("features must be the shared representation, a tensor that requires grad (not detached)")
    comb = _combiner(combiner, int(stacked.numel()))
    if comb.needs_input_grad:
        raise ValueError(
            f"combiner {comb.name!r} needs the network's inputs (the input gradient penalty); use target=representation, or mtbench's trainer"
        )
    stacked2 = _second_losses(comb, second_losses, int(stacked.numel()))
    stop = _node(features)
    _check_each_loss(losses, stacked, stop)
    heads, reached = _walk([stacked.grad_fn], stop)
    if not reached:
        raise ValueError("losses do not depend on features: compute every task's loss from the features passed")
    if shared_params is None:
        # features that are a leaf (the caller's own embedding): their gradient is the shared one
        shared = _walk([features.grad_fn], None)[0] if features.grad_fn is not None else [features]
    else:
        shared = [p for p in shared_params if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    heads = [p for p in heads if id(p) not in shared_ids and p is not features]
    if cpu_generator is None and generator is not None and generator.device.type == "cpu":
        cpu_generator = generator
    model = _Model(shared, heads, trunk)
    step = Step(
        model=model,
        inputs=None,
        rep=features,
        outputs=None,
        losses=stacked,
        generator=generator,
        cpu_generator=cpu_generator,
        group=process_group,
    )  # type: ignore[arg-type]
    if stacked2 is not None:
        step.rep2, step.losses2 = second_features, stacked2
    _check_trunk(comb, trunk)
    comb.backward(step)
    return comb.log_values()


def _second_losses(comb: Combiner, losses: Any, num_tasks: int) -> Tensor | None:
    """``second_losses`` as a [T] tensor; a one-line error where the combiner and the argument
    disagree (given to a one-batch combiner, missing for a two-batch one, another T)."""
    needs = bool(getattr(comb, "needs_second_batch", False))
    if losses is None:
        if needs:
            raise ValueError(
                f"combiner {comb.name!r} needs a second, independent mini-batch: pass its losses as second_losses="
            )
        return None
    if not needs:
        raise ValueError(
            f"second_losses is only for a two-batch combiner (sdmgrad, modo); {comb.name!r} takes one batch"
        )
    stacked = losses.reshape(-1) if isinstance(losses, Tensor) else torch.stack([x.reshape(()) for x in losses])
    if stacked.numel() != num_tasks:
        raise ValueError(f"second_losses has {stacked.numel()} losses but losses has {num_tasks}: give one per task")
    return stacked


def _check_trunk(comb: Combiner, trunk: nn.Module | None) -> None:
    """A combiner that reads the trunk's last weight layer (GradNorm's ``grad_at="last_shared"``,
    the default) needs ``trunk=``: say so in the terms of this function's arguments."""
    if getattr(comb, "grad_at", None) != "last_shared":
        return
    has_weight = trunk is not None and any(
        isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2 and m.weight.requires_grad
        for m in trunk.modules()
    )
    if not has_weight:
        given = "no trunk= was given" if trunk is None else "trunk= has no layer with a weight matrix"
        raise ValueError(
            f"{comb.name} takes its gradient norms at the trunk's last weight layer and {given}: pass "
            "trunk=<the module that produced features> to mtbench.backward, or build the combiner with "
            "grad_at='representation'"
        )

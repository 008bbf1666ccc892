"""Gradient Sign Dropout (GradDrop) at the shared representation."""

from __future__ import annotations

from typing import Any

from mtbench.combiners.base import Combiner, Step, one_of, positive
from mtbench.combiners.functional import GRADDROP_F, graddrop, graddrop_factored
from mtbench.combiners.taskgrads import backward_replacing_rep_grad, rep_task_grads
from mtbench.errors import MtbenchError
from mtbench.options import Option, boolean, number


class GradDrop(Combiner):
    """GradDrop (Chen et al. 2020, "Just Pick a Sign", Algorithm 1) at the representation A.

    Forward: the identity. Backward: from the T per-task gradients dL_i/dA ([T, B, *F],
    :func:`taskgrads.rep_task_grads`: through the stock linear heads by the chain rule, else
    one batched autograd call; with linear heads and per-column losses never stacked,
    :func:`functional.graddrop_factored`), keep at each feature either the positive-signed or the
    negative-signed tasks with probability f(P), P the sign purity
    1/2 (1 + sum_i G_i / (sum_i |G_i| + eps)); see :func:`functional.graddrop` for the
    exact rule. The combined gradient flows into the trunk; each head gets its own loss's
    plain gradient. With every mask 1 this is exactly the baseline's gradient. A null leak
    is the task's default leak (filled in by ``build_combiner``), 0 without one.
    """

    name = "graddrop"
    style = ("#d62728", "*")
    options = {
        "leak": Option(
            None,
            "l_i in [0, 1], one number or one per task: task i's gradient passes with weight l_i + (1 - l_i) M_i (1: untouched);"
            " null: the task's default leak, 0 unless the task sets one",
            lambda key, value, owner: check_leak(0.0 if value is None else value, owner.num_tasks, owner.name),
        ),
        "f": Option("identity", "the map of the purity P: identity | linear | sigmoid", one_of(*GRADDROP_F)),
        "k": Option(1.0, "slope of f (linear, sigmoid)", number(minimum=0, min_open=True)),
        "batch_separated": Option(
            True,
            "G_i summed over the batch with sign(A): one mask per feature for the whole batch (the paper's Sec. 3.2); false: per element",
            boolean(),
        ),
        "renormalize": Option(
            False, "rescale the output to the L2 norm of the plain sum of the task gradients at A", boolean()
        ),
        "eps": Option(1e-7, "added to the purity's denominator (0/0 gives P = 1/2)", positive()),
    }

    def representation_use(self) -> str | None:
        return "a model with one shared representation (e.g. model=segnet): GradDrop acts there only"

    def rule(self) -> dict[str, Any]:
        """The purity map's arguments (``f``, ``k``) of the functional GradDrop; RandomGradDrop:
        ``f="random"``."""
        return {"f": self.f, "k": self.k}

    def drop_options(self, step: Step) -> dict[str, Any]:
        """The functional GradDrop's other arguments, the same for every form of the gradients."""
        return {"leak": self.leak, "generator": step.generator, "eps": self.eps, "renormalize": bool(self.renormalize)}

    def drop(self, grads, activation, step: Step):
        return graddrop(grads, activation, **self.rule(), **self.drop_options(step))

    def drop_factored(self, e, weight, activation, step: Step):
        """:meth:`drop` of the gradients ``g_i[b] = e[b, i] weight_i`` (never stacked)."""
        return graddrop_factored(e, weight, activation, **self.rule(), **self.drop_options(step))

    def backward(self, step: Step) -> None:
        if backward_replacing_rep_grad(step, lambda rep_grads: self._drop_columns(rep_grads, step)):
            return  # linear heads, per-column losses: one backward pass, two products, no [T, B, D] stack
        rep_grads = rep_task_grads(step)
        activation = step.rep.detach() if self.batch_separated else None
        combined = self.drop(rep_grads.full(), activation, step)
        self.backward_heads(step, rep_grads=rep_grads)
        self.backward_trunk(step, combined)

    def _drop_columns(self, rep_grads, step: Step):
        """:meth:`drop_factored` of gradients held as ``e[b, i] W_i``, shape [B, D]."""
        flat = step.rep.detach().reshape(step.rep.shape[0], -1)
        return self.drop_factored(*rep_grads.column_factors(), flat if self.batch_separated else None, step)


def check_leak(leak: Any, num_tasks: int, combiner: str) -> float | list[float]:
    """One number or one per task, each in [0, 1]; else a one-line error naming the option."""
    values = list(leak) if isinstance(leak, (list, tuple)) else [leak]
    if isinstance(leak, (list, tuple)) and len(values) != num_tasks:
        raise MtbenchError(
            f"combiner.leak has {len(values)} values but the task has {num_tasks} tasks; give one number or one per task"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise MtbenchError(f"combiner.leak values must be numbers in [0, 1] for combiner={combiner} (got {v!r})")
    return [float(v) for v in values] if isinstance(leak, (list, tuple)) else float(leak)

"""Combiners that weight the per-task gradients from their Gram matrix (PCGrad, MGDA, ...)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtbench.combiners import distributed
from mtbench.combiners.base import Combiner, Step, one_of, positive
from mtbench.combiners.taskgrads import RepGrads, TaskGrads, backward_replacing_rep_grad
from mtbench.options import Option, integer

LEVELS = ("representation", "params")


class GramWeighted(Combiner):
    """The shared gradient is a combination sum_i w_i g_i of the per-task gradients g_i, with
    the weights w computed from their T x T float64 Gram matrix G[i, j] = g_i . g_j alone.

    A subclass implements :meth:`gram_weights` only; this class takes the g_i (at the level the
    option ``level`` names), gives each head its own loss's gradient, and puts the combination
    into the trunk's parameters:

    * ``level: representation``: the g_i are the gradients at the shared representation,
      flattened over batch and features (:meth:`TaskGrads.at_representation`: through the
      stock linear heads by the chain rule, else one batched autograd call); the combination
      at the representation then goes through the trunk in one backward pass.
    * ``level: params``: the g_i are the gradients of all shared parameters
      (:meth:`TaskGrads.at_params`: T backward passes through the trunk, ``chunk_size`` at a
      time, factored layers where that is cheaper, rows held within ``memory_budget_mb``).

    A new Gram-based method is one such subclass (``name``, ``options`` with
    ``**GramWeighted.options``, ``gram_weights``) plus its config file; it is exact under
    DistributedDataParallel without code of its own (``ddp``): at the representation the g_i
    are per example, so the global Gram matrix is the sum over ranks of the local ones (T x T
    numbers all-reduced), the weights are computed alike on every rank and applied locally,
    and the trunk's gradient is summed once; at the parameters the T per-task gradients are
    summed (T times DDP's traffic), then the method runs as in one process.
    """

    ddp = "representation: the T x T Gram matrix; params: the T per-task gradients of the shared parameters"

    options: ClassVar[dict[str, Option]] = {
        "level": Option(
            "representation",
            "representation: gradients at the shared representation; params: of all shared parameters",
            one_of(*LEVELS),
        ),
        "chunk_size": Option(
            None,
            "tasks per batched backward pass at level=params; null: 1 on a CPU (a plain loop, faster there), 8 on a GPU",
            integer(minimum=1, optional=True),
        ),
        "memory_budget_mb": Option(
            None,
            "level=params: memory for the per-task gradient rows held at once; null: all T rows (fewer: more backward passes, same result)",
            positive(optional=True),
        ),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.task_grads = TaskGrads(chunk_size=self.chunk_size, memory_budget_mb=self.memory_budget_mb)
        #: the weights of the last step (their range is logged per epoch: ``log_values``)
        self.last_weights: torch.Tensor | None = None

    @classmethod
    def level_default(cls, level: str) -> dict[str, Option]:
        """:attr:`options` with another default ``level`` (for a subclass's declaration)."""
        return {**GramWeighted.options, "level": GramWeighted.options["level"].replace(default=level)}

    @property
    def last_factored_layers(self) -> list[torch.nn.Module]:
        """The trunk's layers that took the factored form at the last step (level=params)."""
        return self.task_grads.last_factored_layers

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        """The weights w [T] of the combination sum_i w_i g_i from the float64 Gram matrix
        [T, T] of this step's per-task gradients (and the step, e.g. its losses)."""
        raise NotImplementedError

    def representation_use(self) -> str | None:
        return "combiner.level=params" if self.level == "representation" else None

    def prepare(self, model: torch.nn.Module) -> None:
        if self.level == "params":  # arm the factored layers' hooks before the first step
            self.task_grads.prepare(model)

    def backward(self, step: Step) -> None:
        if self.level == "representation" and backward_replacing_rep_grad(
            step, lambda g: self._combine_at_rep(g, step)
        ):
            return  # one backward pass: the combination replaces the gradient arriving at the representation
        rep_grads = self.task_grads.at_representation(step)
        self.backward_heads(step, rep_grads=rep_grads)
        if self.level == "representation":
            self.backward_trunk(step, self._combine_at_rep(rep_grads, step))
            return
        if step.group is not None:
            self.last_weights = distributed.combine_summed_param_grads(
                step, rep_grads, self.gram_weights, self.chunk_size
            )
            return
        per_task = self.task_grads.at_params(step, rep_grads)
        gram = per_task.gram()
        if self.diagnostics:
            self.diagnostics_gram = gram
        weights = self.gram_weights(gram, step)
        per_task.add_combination(weights)
        self.last_weights = weights

    def _combine_at_rep(self, rep_grads: RepGrads, step: Step) -> torch.Tensor:
        """sum_i w_i g_i at the representation, the weights from the g_i's Gram matrix (kept as
        ``last_weights``)."""
        gram = distributed.all_reduce_sum(rep_grads.gram(), step.group)
        if self.diagnostics:
            self.diagnostics_gram = gram
        weights = self.gram_weights(gram, step)
        self.last_weights = weights
        return rep_grads.combine(weights)

    def computes_gram(self) -> bool:
        """True: the Gram matrix at the level the combiner works (``level``) is its input."""
        return True

    def log_values(self) -> dict[str, float]:
        """The range of the last step's task weights (``history.csv``'s ``combiner_w_min`` and
        ``combiner_w_max``, the loggers' diagnostics); read once per epoch."""
        if self.last_weights is None:
            return {}
        w = self.last_weights.detach()
        return {"w_min": float(w.min()), "w_max": float(w.max())}


class WarmStarted(GramWeighted):
    """A Gram-matrix combiner whose solve starts from the last step's solution (MGDA's weights,
    FairGrad's normalised weights, UPGrad's and DualProj's free sets): ``self.start``, None
    before the first step. It is the combiner's state, saved in checkpoints, so a resumed run
    takes the same iterations; the solution does not depend on it beyond the solver's tolerance
    (``warm_start_state``), so a fresh instance per step works too."""

    warm_start_state = True
    #: the dtype ``start`` is restored in from a checkpoint
    start_dtype: ClassVar[torch.dtype] = torch.float64

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        #: the last solve's solution (the next solve's first guess)
        self.start: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"start": None if self.start is None else self.start.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = state.get("start")
        self.start = None if start is None else torch.as_tensor(start, dtype=self.start_dtype).clone()

"""The small interface every combiner implements.

A combiner receives one training step's per-task losses (plus the shared representation,
the model and the inputs) and leaves the parameter gradients in ``.grad``; the optimizer
steps afterwards. Scale convention: the shared parameters' gradient is on the scale of the
plain sum of task losses (the baseline) unless an option says otherwise, so one learning
rate serves every combiner.

The interface: ``name``, ``options`` (each declared once as an :class:`~mtbench.options.Option`
with its default, one-line doc and check; a plain ``defaults = {option: default}`` dict works
too), ``backward(step)``, ``prepare(model)``, ``state_dict`` / ``load_state_dict``,
``log_values`` and the epoch hook ``end_epoch`` (optional). The per-task gradient machinery lives in :mod:`mtbench.combiners.taskgrads`
(a combiner that needs it holds a :class:`~mtbench.combiners.taskgrads.TaskGrads`); the
Gram-matrix methods derive from :class:`~mtbench.combiners.gramweighted.GramWeighted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtbench.combiners import taskgrads
from mtbench.combiners.taskgrads import RepGrads
from mtbench.errors import MtbenchError
from mtbench.options import Check, Option


@dataclass
class Step:
    """Everything a combiner may need about one training step.

    ``rep`` is the shared representation [B, *F] still attached to the trunk's graph,
    ``outputs`` the heads' outputs, ``losses`` the T per-task losses (a vector [T]).
    ``inputs`` requires grad only when the combiner sets ``needs_input_grad``.
    """

    model: nn.Module
    inputs: torch.Tensor
    rep: torch.Tensor
    outputs: torch.Tensor
    losses: torch.Tensor
    #: random numbers on the training device (e.g. GradDrop's uniform draws)
    generator: torch.Generator | None = None
    #: random numbers on the host (e.g. PCGrad's permutations)
    cpu_generator: torch.Generator | None = None
    #: loss i reads column i of ``outputs`` [B, T] only (``Task.column_losses``): the per-task
    #: gradients at the outputs are then the columns of one backward pass of sum_i L_i
    column_losses: bool = False
    group: Any = None


class Combiner:
    """Base class: subclasses set ``name``, ``options`` (or a plain ``defaults`` dict) and
    implement ``backward``.

    Options come from the combiner's config file (every key but ``name`` and ``_target_``);
    an option the class does not declare is an error naming the allowed ones. Each option is
    checked by its declaration and set as an attribute of the same name (the checked value);
    ``opts`` keeps the values as given.
    """

    name: ClassVar[str] = ""
    #: the options of this combiner, each with its default, doc and check
    options: ClassVar[dict[str, Option]] = {}
    #: option -> default (derived from ``options``; or given alone, without docs and checks)
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the trainer must make the inputs require grad (input gradient penalty)
    needs_input_grad: ClassVar[bool] = False
    #: True when the combiner's state only warm-starts its next solve (MGDA's last weights):
    #: the results do not depend on it beyond the solver's tolerance, so a fresh instance per
    #: step (``mtbench.backward(losses, rep, "mgda")``) is fine
    warm_start_state: ClassVar[bool] = False
    #: (colour, marker) of the combiner in the plots; None: one of the spare styles
    style: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options" in cls.__dict__:
            cls.defaults = {k: o.default for k, o in cls.options.items()}
        elif "defaults" in cls.__dict__:  # a plain dict: keep any inherited declaration of the same key
            inherited = cls.options
            cls.options = {
                k: inherited[k].replace(default=v) if k in inherited else Option(v) for k, v in cls.defaults.items()
            }

    def __init__(self, num_tasks: int, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise MtbenchError(
                f"combiner.{unknown[0]} is not an option of combiner={self.name}; its options are: {allowed}"
            )
        self.num_tasks = int(num_tasks)
        self.opts = {**self.defaults, **options}
        for key, option in self.options.items():
            setattr(self, key, option.validate(f"combiner.{key}", self.opts[key], self))

    # -- the one method a combiner must implement ---------------------------------------
    def backward(self, step: Step) -> None:
        """Accumulate this step's gradients into ``.grad`` of every trainable parameter."""
        raise NotImplementedError

    def representation_use(self) -> str | None:
        """None when this combiner, as configured, never reads the model's shared representation
        (``Step.rep``) as one feature map that every task's loss goes through; else the fix for
        a model that has no such representation (MTAN): the option value that avoids it, or a
        sentence. Checked before a run starts (:func:`check_representation`)."""
        return None

    def prepare(self, model: nn.Module) -> None:
        """Called by the trainer once the model is built, before its first forward pass
        (default: nothing). A combiner with a per-layer fast path arms its forward hooks here,
        so every step, the first of a process (a resumed run's) included, takes the path that
        the step's own shapes call for."""

    def end_epoch(self) -> None:
        """Called by the trainer once an epoch's last step is done, before the epoch's checkpoint
        (default: nothing). A combiner that works per epoch (DWA's epoch-mean losses) closes
        the epoch here; what it keeps is combiner state (``state_dict``)."""

    # -- state carried across steps (e.g. GradNorm's weights); saved in checkpoints ------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging per epoch (e.g. task weights); empty by default."""
        return {}

    def check_positive(self, option: str, value: Any) -> float:
        """A finite number > 0, or a one-line error naming ``combiner.<option>``."""
        return positive()(f"combiner.{option}", value, self)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.opts.items())
        return f"{type(self).__name__}({opts})"

    # -- building blocks for subclasses (see mtbench.combiners.taskgrads) -------------------
    @staticmethod
    def task_grads_at(losses: torch.Tensor, tensor: torch.Tensor, retain_graph: bool = True) -> torch.Tensor:
        """All T per-task gradients dL_i/d(tensor), shape [T, *tensor.shape]
        (:func:`mtbench.combiners.taskgrads.task_grads_at`)."""
        return taskgrads.task_grads_at(losses, tensor, retain_graph)

    @staticmethod
    def default_chunk(value: Any, device: torch.device) -> int:
        """``chunk_size: null`` = 1 on a CPU (a loop is faster there), 8 on an accelerator."""
        return taskgrads.default_chunk(value, device)

    @staticmethod
    def rep_task_grads(step: Step) -> RepGrads:
        """The T per-task gradients dL_i/d(rep) of a step as a :class:`RepGrads`
        (:func:`mtbench.combiners.taskgrads.rep_task_grads`)."""
        return taskgrads.rep_task_grads(step)

    @staticmethod
    def task_grads_at_params(
        step: Step, rep_grads: torch.Tensor, params: list[torch.Tensor], chunk_size: int = 8
    ) -> torch.Tensor:
        """Per-task gradients of ``params``, flattened and concatenated: [T, P], from the
        per-task gradients at the representation (:func:`mtbench.combiners.taskgrads.param_grad_stack`)."""
        return taskgrads.param_grad_stack(step, rep_grads, params, chunk_size)

    @staticmethod
    def backward_heads(step: Step, weights: torch.Tensor | None = None, rep_grads: RepGrads | None = None) -> None:
        """Each head gets its own loss's gradient (weighted by ``weights`` if given); from the
        step's per-task gradients at the representation in closed form where they allow it
        (:meth:`RepGrads.add_head_grads`), else by autograd."""
        if weights is None and rep_grads is not None and rep_grads.add_head_grads(step.rep):
            return
        heads = step.model.head_parameters()
        total = step.losses.sum() if weights is None else (weights * step.losses).sum()
        torch.autograd.backward(total, inputs=heads, retain_graph=True)

    @staticmethod
    def backward_trunk(step: Step, rep_grad: torch.Tensor) -> None:
        """Push a gradient at the representation through the shared trunk."""
        torch.autograd.backward(step.rep, rep_grad, inputs=step.model.shared_parameters())


def check_representation(combiner: Combiner, model: str, shared_representation: bool | None) -> None:
    """A one-line error when ``combiner`` works at the shared representation and the model
    ``model`` has none (``shared_representation`` False, e.g. ``segnet_mtan``: every task's
    head reads its own attended features); None (not known) and True pass."""
    if shared_representation is not False:
        return
    fix = combiner.representation_use()
    if fix is None:
        return
    raise MtbenchError(
        f"combiner={combiner.name} works at the shared representation, but model={model} has none "
        f"(each task's head reads its own features); use {fix}"
    )


# -- checks of combiner options (Option.check): one-line errors naming the combiner -----------


def one_of(*allowed: str) -> Check:
    """A check: one of ``allowed``."""

    def check(key: str, value: Any, owner: Any) -> Any:
        if value not in allowed:
            raise MtbenchError(
                f"{key}={value!r} is not allowed for combiner={owner.name}; choose one of: {', '.join(allowed)}"
            )
        return value

    return check


def positive(optional: bool = False) -> Check:
    """A check: a finite number > 0 (as a float); null too if ``optional``."""

    def check(key: str, value: Any, owner: Any) -> float | None:
        if value is None and optional:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not (number > 0 and number != float("inf")):
            raise MtbenchError(f"{key} must be a positive number for combiner={owner.name} (got {value!r})")
        return number

    return check


def check_choice(option: str, value: Any, allowed: tuple[str, ...], combiner: str) -> None:
    """``value`` one of ``allowed``, or a one-line error naming ``combiner.<option>``."""
    if value not in allowed:
        raise MtbenchError(
            f"combiner.{option}={value!r} is not allowed for combiner={combiner}; choose one of: {', '.join(allowed)}"
        )

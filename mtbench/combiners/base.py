"""The small base class every combiner derives from.

A combiner receives one training step's per-task losses (plus the shared representation,
the model and the inputs) and leaves the parameter gradients in ``.grad``; the optimizer
steps afterwards. Scale convention: the shared parameters' gradient is on the scale of the
plain sum of task losses (the baseline) unless an option says otherwise, so one learning
rate serves every combiner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtbench import MtbenchError
from mtbench.combiners.taskgrads import (
    LayerCapture,
    ParamTaskGrads,
    RepGrads,
    batched_grads,
    budget_bytes,
    captured_layers,
    factored_cost,
    factored_layer,
    rep_task_grads,
)


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


class Combiner:
    """Base class: subclasses set ``name``, ``defaults`` (option -> default) and ``backward``.

    Options come from the combiner's config file (every key but ``name`` and ``_target_``);
    an option the class does not declare is an error naming the allowed ones.
    """

    name: ClassVar[str] = ""
    #: options of this combiner and their defaults
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the trainer must make the inputs require grad (input gradient penalty)
    needs_input_grad: ClassVar[bool] = False

    def __init__(self, num_tasks: int, **options: Any):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise MtbenchError(
                f"combiner.{unknown[0]} is not an option of combiner={self.name}; its options are: {allowed}"
            )
        self.num_tasks = int(num_tasks)
        self.opts = {**self.defaults, **options}
        for key, value in self.opts.items():
            setattr(self, key, value)

    # -- the one method a combiner must implement ---------------------------------------
    def backward(self, step: Step) -> None:
        """Accumulate this step's gradients into ``.grad`` of every trainable parameter."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Called by the trainer once the model is built, before its first forward pass
        (default: nothing). A combiner with a per-layer fast path arms its forward hooks here,
        so every step, the first of a process (a resumed run's) included, takes the path that
        the step's own shapes call for."""

    # -- state carried across steps (e.g. GradNorm's weights); saved in checkpoints ------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def check_positive(self, option: str, value: Any) -> float:
        """A finite number > 0, or a one-line error naming ``combiner.<option>``."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not (number > 0 and number != float("inf")):
            raise MtbenchError(f"combiner.{option} must be a positive number for combiner={self.name} (got {value!r})")
        return number

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging per epoch (e.g. task weights); empty by default."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.opts.items())
        return f"{type(self).__name__}({opts})"

    # -- shared building blocks -----------------------------------------------------------
    @staticmethod
    def task_grads_at(losses: torch.Tensor, tensor: torch.Tensor, retain_graph: bool = True) -> torch.Tensor:
        """All T per-task gradients dL_i/d(tensor), shape [T, *tensor.shape], in one batched
        autograd call (vmap over the backward pass); falls back to a loop over tasks where
        vmap cannot run the backward (some compiled models, RNNs, AMP with normalisation)."""
        T = losses.shape[0]
        eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
        try:
            (grads,) = torch.autograd.grad(losses, tensor, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph)
        except RuntimeError:
            rows = [torch.autograd.grad(losses[i], tensor, retain_graph=retain_graph or i < T - 1)[0] for i in range(T)]
            grads = torch.stack(rows)
        return grads

    @staticmethod
    def default_chunk(value: Any, device: torch.device) -> int:
        """``chunk_size: null`` = 1 on a CPU (a loop is faster there), 8 on an accelerator."""
        return int(value) if value is not None else (1 if device.type == "cpu" else 8)

    @staticmethod
    def rep_task_grads(step: Step) -> RepGrads:
        """The T per-task gradients dL_i/d(rep) of a step as a :class:`RepGrads` (``full()``:
        the [T, *rep.shape] stack; ``gram()``: their float64 Gram matrix; ``combine(w)``:
        sum_i w_i dL_i/d(rep)). With the stock linear heads they come from the chain rule
        through the heads' weight (one tiny autograd call over the losses only), the same
        values as :meth:`task_grads_at` up to rounding; otherwise from :meth:`task_grads_at`."""
        return rep_task_grads(step, general=Combiner.task_grads_at)

    @staticmethod
    def task_grads_at_params(
        step: Step, rep_grads: torch.Tensor, params: list[torch.Tensor], chunk_size: int = 8
    ) -> torch.Tensor:
        """Per-task gradients of the shared parameters, flattened and concatenated: [T, P].

        Task i's parameter gradient is the trunk's vector-Jacobian product with task i's
        gradient at the representation (``rep_grads[i]``, from :meth:`task_grads_at`).
        ``chunk_size`` tasks go through the trunk's backward together (one vmapped call),
        which bounds the extra memory to ``chunk_size`` backward passes; ``chunk_size=1``
        is a plain loop of backward passes (the faster choice on a CPU), and also the
        fallback where vmap cannot run the backward. Rows are written straight into the
        [T, P] result (no intermediate copies).
        """
        T = rep_grads.shape[0]
        width = sum(p.numel() for p in params)
        out = torch.empty((T, width), dtype=params[0].dtype, device=params[0].device)
        chunk = max(1, int(chunk_size))
        for start in range(0, T, chunk):
            part = rep_grads[start : start + chunk]
            grads = batched_grads(step.rep, params, part, retain_graph=True)
            for r in range(part.shape[0]):
                torch.cat([g[r].reshape(-1) for g in grads], out=out[start + r])
        return out

    def factored_candidates(self, model: nn.Module) -> tuple[LayerCapture, list[nn.Module]]:
        """The forward-hook capture and the trunk's layers that may take the factored form at
        the params level (stock convolution and linear layers with shared weights); the hooks
        are armed at the first call (by :meth:`prepare`, or at the first step without it)."""
        capture = self.__dict__.get("_capture")
        if capture is None:
            capture = self.__dict__["_capture"] = LayerCapture()
        trunk = getattr(model, "trunk", model)
        candidates = self.__dict__.get("_factored_candidates")
        if candidates is None or candidates[0] is not trunk:
            params = model.shared_parameters() if hasattr(model, "shared_parameters") else [p for p in model.parameters() if p.requires_grad]
            shared = {id(p) for p in params}
            mods = [m for m in trunk.modules() if factored_layer(m) and getattr(m, "weight", None) is not None and id(m.weight) in shared]
            candidates = self.__dict__["_factored_candidates"] = (trunk, mods)
            capture.watch(mods)
        return capture, candidates[1]

    def param_task_grads(
        self, step: Step, rep_grads: RepGrads, chunk_size: Any = None, memory_budget_mb: Any = None
    ) -> ParamTaskGrads:
        """Per-task gradients of the shared parameters as a :class:`ParamTaskGrads` (their
        float64 Gram matrix and any combination sum_i w_i g_i added into ``.grad``).

        ``chunk_size`` tasks per batched backward call (null: :meth:`default_chunk`);
        ``memory_budget_mb`` bounds the rows of the per-task gradient stack held at once
        (null: all T). The trunk's convolution and linear layers whose weight gradient is
        cheaper through their input and output than explicitly (few positions, wide weights:
        ResNet's last stage; or a small batch) enter the Gram matrix in that factored form (see
        :mod:`mtbench.combiners.taskgrads`): same numbers up to rounding. Which layers do is
        decided at every call from that call's shapes alone (a smaller last batch may choose
        differently), never from earlier calls, so a resumed run takes the same path as an
        uninterrupted one. The layers' forward hooks are armed by :meth:`prepare` (the
        trainer calls it before the first forward pass); without it, at the first call,
        which then takes the plain path.
        """
        model = step.model
        params = model.shared_parameters() if hasattr(model, "shared_parameters") else [p for p in model.parameters() if p.requires_grad]
        capture, candidates = self.factored_candidates(model)
        T = rep_grads.num_tasks

        def pays(m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> bool:
            c = m.weight.shape[0]
            n = out.numel() // (out.shape[1] if isinstance(m, nn.Conv2d) else out.shape[-1])
            k = m.weight[0].numel()
            fac, plain = factored_cost(n, k, c, T)
            return fac < plain

        layers = captured_layers(step, capture, candidates, select=pays)
        self.__dict__["last_factored_layers"] = [m for m, _, _ in layers]  # (diagnostics, tests)
        chunk = self.default_chunk(chunk_size, step.rep.device)
        return ParamTaskGrads(step, rep_grads.full(), params, chunk=chunk, budget_bytes=budget_bytes(memory_budget_mb), layers=layers)

    @staticmethod
    def add_flat_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
        """Add a flat gradient vector (the concatenation order of ``params``) into ``.grad``."""
        offset = 0
        for p in params:
            n = p.numel()
            g = flat[offset : offset + n].view_as(p)
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
            offset += n

    @staticmethod
    def backward_heads(step: Step, weights: torch.Tensor | None = None) -> None:
        """Each head gets its own loss's gradient (weighted by ``weights`` if given)."""
        heads = step.model.head_parameters()
        total = step.losses.sum() if weights is None else (weights * step.losses).sum()
        torch.autograd.backward(total, inputs=heads, retain_graph=True)

    @staticmethod
    def backward_trunk(step: Step, rep_grad: torch.Tensor) -> None:
        """Push a gradient at the representation through the shared trunk."""
        torch.autograd.backward(step.rep, rep_grad, inputs=step.model.shared_parameters())


def check_choice(option: str, value: Any, allowed: tuple[str, ...], combiner: str) -> None:
    if value not in allowed:
        raise MtbenchError(f"combiner.{option}={value!r} is not allowed for combiner={combiner}; choose one of: {', '.join(allowed)}")

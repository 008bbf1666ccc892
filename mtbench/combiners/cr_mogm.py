"""CR-MOGM: the weights of any Gram-weighted method smoothed by an exponential moving average."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.rows import _check_option, _combine_rows
from mtbench.errors import MtbenchError
from mtbench.options import Option, number

CR_MOGM_ALPHA = 0.9
#: the wrapper's own options, which its inner method takes from it (not from ``inner_options``)
_SHARED = ("level", "chunk_size", "memory_budget_mb")


def cr_mogm_weights(weights: Tensor, previous: Tensor | None, alpha: float = CR_MOGM_ALPHA) -> Tensor:
    """CR-MOGM's smoothing (Zhou et al. 2022): lambda_k = alpha lambda_(k-1) + (1 - alpha)
    lambda_hat_k of this step's weights ``weights`` (lambda_hat_k, any method's, on any scale)
    and the last smoothed ones ``previous`` (None at the first step: lambda_0 = lambda_hat_1,
    so the first step returns ``weights``); float64. torchjd's ``CRMOGMWeighting(..., alpha)``
    without ``initial_weights``."""
    _check_option("cr_mogm", "alpha", alpha, 0.0 <= alpha <= 1.0, "in [0, 1]")
    hat = weights.detach().to(device="cpu", dtype=torch.float64)
    if previous is None:
        return hat.clone()
    prev = torch.as_tensor(previous, dtype=torch.float64)
    if prev.shape != hat.shape:
        raise ValueError(f"cr_mogm: previous weights have shape {tuple(prev.shape)}, expected {tuple(hat.shape)}")
    return alpha * prev + (1.0 - alpha) * hat


def cr_mogm(grads: Tensor, weights_from_gram, previous: Tensor | None = None, alpha: float = CR_MOGM_ALPHA) -> Tensor:
    """The rows of ``grads`` [T, D] combined by the EMA (:func:`cr_mogm_weights`) of
    ``weights_from_gram(gram)`` (any ``functional.*_weights_from_gram``) and ``previous``."""
    return _combine_rows(grads, "cr_mogm", lambda gram: cr_mogm_weights(weights_from_gram(gram), previous, alpha))


def gram_weighted_methods() -> dict[str, type[GramWeighted]]:
    """The built-in combiners CR-MOGM can wrap, by name: those weighting the gradients from their
    Gram matrix alone (mtbench's :class:`GramWeighted` subclasses; the registry imports them all),
    CR-MOGM itself excepted."""
    found: dict[str, type[GramWeighted]] = {}
    todo = list(GramWeighted.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        if cls.name and cls.__module__.startswith("mtbench.combiners.") and not issubclass(cls, CRMOGM):
            found.setdefault(cls.name, cls)
    return dict(sorted(found.items()))


class CRMOGM(GramWeighted):
    """CR-MOGM (Zhou et al., NeurIPS 2022, "On the Convergence of Stochastic Multi-Objective
    Gradient Manipulation and Beyond"): the task weights of a Gram-weighted method (``inner``:
    upgrad, mgda, pcgrad, cagrad, ...) smoothed across steps, lambda_k = alpha lambda_(k-1) +
    (1 - alpha) lambda_hat_k, lambda_0 = lambda_hat_1; the update is sum_i lambda_k,i g_i.

    Composed like ``gradnorm_graddrop``: the inner method is that combiner, built from its own
    options (``inner_options``; ``level``, ``chunk_size`` and ``memory_budget_mb`` are the
    wrapper's); its weights come from mtbench's float64 Gram matrix at the wrapper's level. The
    EMA [T] and the inner method's own state are the combiner's state. Scale: the inner
    method's (the EMA of weights on its scale; factor 1). Options: those of :class:`GramWeighted`
    (``level`` defaulting to ``representation``), ``inner``, ``inner_options``, ``alpha``.
    """

    name = "cr_mogm"
    style = ("#393b79", "*")
    options = {
        **GramWeighted.level_default("representation"),
        "inner": Option("upgrad", "the Gram-weighted method whose weights are smoothed (upgrad, mgda, pcgrad, ...)"),
        "inner_options": Option({}, "the inner method's own options (not level, chunk_size, memory_budget_mb)"),
        "alpha": Option(CR_MOGM_ALPHA, "EMA weight of the previous weights, in [0, 1] (0: no smoothing)", number(0, 1)),
    }

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        methods = gram_weighted_methods()
        if self.inner not in methods:
            raise MtbenchError(
                f"combiner.inner={self.inner!r} is not a Gram-weighted method; cr_mogm wraps one of: {', '.join(methods)}"
            )
        given = self.inner_options if self.inner_options is not None else {}
        if not isinstance(given, dict):
            raise MtbenchError(f"combiner.inner_options must be a mapping of {self.inner}'s options (got {given!r})")
        given = {k: v for k, v in given.items() if not (k == "name" and v == self.inner)}
        shared = sorted(set(given) & set(_SHARED))
        if shared:
            raise MtbenchError(
                f"combiner.inner_options.{shared[0]} is cr_mogm's own option: set combiner.{shared[0]} instead"
            )
        cls = methods[self.inner]
        try:
            self.inner_combiner: GramWeighted = cls(num_tasks, **given, **{k: self.opts[k] for k in _SHARED})
        except MtbenchError as e:
            raise MtbenchError(str(e).replace("combiner.", "combiner.inner_options.", 1)) from None
        #: the smoothed weights of the last step (lambda_(k-1) of the next)
        self.ema: Tensor | None = None

    def bind_tasks(self, task_names: Sequence[str]) -> None:
        self.inner_combiner.bind_tasks(task_names)

    def gram_weights(self, gram: Tensor, step: Step) -> Tensor:
        hat = self.inner_combiner.gram_weights(gram, step)
        self.inner_combiner.last_weights = hat
        self.ema = cr_mogm_weights(hat, self.ema, self.alpha)
        return self.ema.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": None if self.ema is None else self.ema.clone(),
            "inner": self.inner_combiner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else torch.as_tensor(ema, dtype=torch.float64).clone()
        self.inner_combiner.load_state_dict(state.get("inner") or {})

    def log_values(self) -> dict[str, float]:
        return {**self.inner_combiner.log_values(), **super().log_values()}

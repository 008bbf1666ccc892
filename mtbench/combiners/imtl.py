"""IMTL: IMTL-L's learned loss scales, and IMTL-G's weights on the scaled losses' gradients."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtbench.combiners.base import Step
from mtbench.combiners.gramweighted import GramWeighted
from mtbench.combiners.imtl_l import WEIGHT_LR, LossScales
from mtbench.combiners.linalg import well_conditioned_solve
from mtbench.combiners.rows import _check_option, _combine_rows


def _scales64(log_scales: Any, t: int, fn: str) -> Tensor:
    """e^s as float64 CPU [T], or a ValueError naming ``log_scales``."""
    s = torch.as_tensor(log_scales).detach().to(device="cpu", dtype=torch.float64)
    _check_option(fn, "log_scales", tuple(s.shape), s.shape == (t,), f"a vector of the {t} tasks' log scales")
    _check_option(fn, "log_scales", s.tolist(), bool(torch.isfinite(s).all()), "finite")
    return s.exp()


def imtl_weights_from_gram(gram: Tensor, log_scales: Any) -> Tensor:
    """IMTL's weights w [T] (float64) for the unscaled gradients g_i whose Gram matrix is ``gram``,
    given the loss scales s (``log_scales`` [T]): IMTL-G's weights alpha (T times torchjd's
    ``IMTLGWeighting``) of the scaled gradients h_i = e^{s_i} g_i, whose Gram matrix is H = D G D
    (D = diag(e^s)), turned into weights of the g_i: sum_i alpha_i h_i = sum_i w_i g_i,
    w_i = alpha_i e^{s_i}.

    torchjd's alpha is proportional to pinv(H) ||h|| = D^{-1} G^{-1} ||g|| = D^{-1} N^{-1} C^{-1} 1
    when G is invertible (N = diag(||g_i||), C the gradients' cosines, G = N C N). Where C's
    Cholesky factor certifies it well conditioned (:func:`~mtbench.combiners.linalg.well_conditioned_solve`),
    a = e^{-s} N^{-1} C^{-1} 1 and alpha = T a / sum_j a_j (zero when that sum is below 1e-12,
    torchjd's test on the same number): torchjd's alpha in exact arithmetic, and still exact where
    the loss scales or the gradients' norms make H too ill-conditioned for a pseudo-inverse (as
    LibMTL's formula is; docs/combiners/imtl.md, tests/combiners/test_imtl.py). Else (a zero gradient, nearly dependent gradients) torchjd's
    ``pinv`` of H, its generalisation to linearly dependent gradients."""
    from mtbench.combiners.jd import gram_np64

    g = gram_np64(gram, "imtl_weights_from_gram")
    t = g.shape[0]
    e = _scales64(log_scales, t, "imtl_weights_from_gram").numpy()
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    v = None
    if t and bool((norms > 0).all()):  # G^{-1} ||g|| = N^{-1} C^{-1} 1, C the cosines (N = diag ||g||)
        v = well_conditioned_solve(g / (norms[:, None] * norms[None, :]), np.ones(t))
    if v is None:
        h = g * e[:, None] * e[None, :]
        a = torch.linalg.pinv(torch.from_numpy(h)).numpy() @ (norms * e)
    else:
        a = v / (norms * e)
    total = float(a.sum())
    if not abs(total) >= 1e-12:
        return torch.zeros(t, dtype=torch.float64)
    return torch.from_numpy(t * (a / total) * e)


def imtl(grads: Tensor, log_scales: Any) -> Tensor:
    """IMTL of the rows of ``grads`` [T, *S] (each task's unscaled loss gradient) with the loss
    scales s [T]: T x torchjd's ``IMTLG()`` of the rows e^{s_i} g_i, shape S."""
    return _combine_rows(grads, "imtl", imtl_weights_from_gram, log_scales=log_scales)


class IMTL(GramWeighted):
    """IMTL, impartial multitask learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021,
    "Towards Impartial Multi-task Learning", ICLR, Sec. 3.3 and Algorithm 1), the full method:
    IMTL-L's learned loss scales s_i (0 at first) scale the losses to e^{s_i} L_i, and IMTL-G
    combines the scaled losses' gradients h_i = e^{s_i} g_i for the shared parameters,

        d = sum_i alpha_i h_i,   alpha proportional to pinv(H) ||h||,  H[i, j] = h_i . h_j,

    the combination with equal projections on every unit gradient (torchjd's ``IMTLGWeighting``
    formula, mtbench's code of it: :func:`functional.imtl_g_weights_from_gram`). Each head gets
    its own scaled loss's gradient e^{s_i} dL_i; the scales take one step of their own Adam
    (``weight_lr``) on the gradient of sum_i e^{s_i} L_i - s_i in s, e^{s_i} L_i - 1 (closed
    form, as ``imtl_l``). The unit gradients do not depend on the scales, so the scales change the
    length of the shared step and the heads' steps, not the shared direction.

    The step is IMTL-G's on the step whose losses are e^{s_i} L_i (s at this step's value, before
    its update): ``last_weights`` are alpha, the weights of the scaled gradients, whose Gram
    matrix is H (the unscaled gradients' weights are alpha_i e^{s_i}:
    :func:`functional.imtl_weights_from_gram`). Scale: T times the paper's alpha, which sum to
    one, as ``imtl_g``; the scales start at 0, so the first step is ``imtl_g``'s. The paper and
    LibMTL's ``IMTL`` learn s with the network's optimizer; here s has its own Adam (the
    trainer's default learning rate). Options: those of :class:`GramWeighted`, ``level``
    defaulting to ``representation`` (the paper's gradients at the shared feature, as
    ``imtl_g``), and ``weight_lr``. The scales and their optimizer's state are combiner state.
    """

    name = "imtl"
    style = ("#ce6dbd", "p")
    options = {**GramWeighted.level_default("representation"), "weight_lr": WEIGHT_LR}
    #: the scales step on the losses' global values (the same on every rank), then GramWeighted's
    ddp = (
        "the T losses (IMTL-L's scales from their global values), then the Gram matrix or per-task rows as GramWeighted"
    )

    def __init__(self, num_tasks: int, **options: Any):
        super().__init__(num_tasks, **options)
        self.loss_scales = LossScales(self.num_tasks, self.weight_lr)
        #: e^s of the current step (float64, on the host), set by ``backward``
        self._scale64: Tensor | None = None

    def backward(self, step: Step) -> None:
        scale = self.loss_scales.step(step.losses)  # e^s at this step's s (then s takes its step)
        self._scale64 = scale.detach().to(device="cpu", dtype=torch.float64)
        losses = step.losses * scale.to(torch.promote_types(step.losses.dtype, scale.dtype))
        super().backward(dataclasses.replace(step, losses=losses))

    def gram_weights(self, gram: torch.Tensor, step: Step) -> torch.Tensor:
        """IMTL-G's weights alpha of the scaled gradients (``step``'s losses are the scaled ones,
        ``gram`` their Gram matrix H): from :func:`imtl_weights_from_gram` of the unscaled
        G = D^{-1} H D^{-1}, alpha_i = w_i / e^{s_i} (the well-conditioned form where G is)."""
        e = self._scale64
        if e is None:  # (called outside backward: the scales of the last step, 1 before the first)
            e = torch.ones(gram.shape[0], dtype=torch.float64)
        gram = torch.as_tensor(gram).detach().to(device="cpu", dtype=torch.float64)
        return imtl_weights_from_gram(gram / (e[:, None] * e[None, :]), e.log()) / e

    def state_dict(self) -> dict[str, Any]:
        return self.loss_scales.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_scales.load_state_dict(state)

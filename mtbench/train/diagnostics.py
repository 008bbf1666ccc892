"""What a combiner does, per epoch (``trainer.diagnostics=true``; off by default).

Every training step, from the Gram matrix ``G[i, j] = g_i . g_j`` of the per-task gradients,
the task weights and the combiner's own values (docs/guide/diagnostics.md):

- ``diag_gnorm_<task>``: ||g_i|| = sqrt(G[i, i]);
- ``diag_cos_mean``, ``diag_cos_min``: the mean and minimum over pairs i < j of the cosine
  G[i, j] / (||g_i|| ||g_j||) (0 for a pair with a zero gradient);
- ``diag_conflict_frac``: the fraction of pairs i < j with G[i, j] < 0;
- ``diag_w_min``, ``diag_w_max``, ``diag_w_entropy``: the weights' min, max and normalised
  entropy -sum_i p_i log p_i / log T of p = |w| / sum_i |w| (1: equal weights, 0: one task
  alone; ``last_weights`` combiners only);
- ``diag_graddrop_kept``: the share of (task, feature) entries with a non-zero signed gradient
  that GradDrop's mask keeps.

An epoch's column is the mean over its steps. The Gram matrix is the combiner's own where it
computes one (``Combiner.diagnostics_gram``), else one computed at the shared representation
(:func:`mtbench.combiners.taskgrads.rep_task_grads`; none without one). Training is unchanged:
no random draws, nothing written to ``.grad``; the statistics stay on the device until the
epoch ends.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["PREFIX", "Diagnostics", "gram_statistics", "weight_statistics"]

log = logging.getLogger("mtbench")

#: the prefix of the diagnostics' columns in ``history.csv``
PREFIX = "diag_"


def gram_statistics(gram: Tensor) -> dict[str, Tensor]:
    """The per-task gradient norms ``gnorm`` [T] and, for T >= 2, ``cos_mean``, ``cos_min`` and
    ``conflict_frac`` (0-d tensors) of the Gram matrix ``gram`` [T, T] (float64, on its device;
    no host synchronisation)."""
    g = gram.detach().to(torch.float64)
    g = 0.5 * (g + g.T)
    norms = g.diagonal().clamp_min(0).sqrt()
    out = {"gnorm": norms}
    t = g.shape[0]
    if t < 2:
        return out
    i, j = torch.triu_indices(t, t, offset=1, device=g.device)
    dots = g[i, j]
    denom = norms[i] * norms[j]
    cos = torch.where(denom > 0, dots / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dots))
    cos = cos.clamp(-1.0, 1.0)
    out["cos_mean"] = cos.mean()
    out["cos_min"] = cos.min()
    out["conflict_frac"] = (dots < 0).to(torch.float64).mean()
    return out


def weight_statistics(weights: Tensor) -> dict[str, Tensor]:
    """``w_min``, ``w_max`` and ``w_entropy`` (normalised: -sum p log p / log T, p = |w| / sum |w|;
    NaN when every weight is 0; 1 for T = 1) of the task weights ``weights`` [T]."""
    w = weights.detach().to(torch.float64).reshape(-1)
    t = w.shape[0]
    a = w.abs()
    total = a.sum()
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    terms = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    entropy = -terms.sum() / math.log(t) if t > 1 else torch.ones((), dtype=torch.float64, device=w.device)
    entropy = torch.where(total > 0, entropy, torch.full_like(entropy, float("nan")))
    return {"w_min": w.min(), "w_max": w.max(), "w_entropy": entropy}


class Diagnostics:
    """The per-epoch diagnostics of one run: the trainer's step calls :meth:`before` and
    :meth:`after` around ``combiner.backward``; :meth:`epoch_values` gives the epoch's columns
    (and starts the next epoch). The running sums are saved in a mid-epoch checkpoint
    (:meth:`state_dict`), so a resumed epoch has the same columns."""

    def __init__(self, combiner: Any, task_names: list[str], shared_representation: bool = True):
        self.combiner = combiner
        self.task_names = [str(n) for n in task_names]
        self.shared_representation = shared_representation is not False
        combiner.diagnostics = True
        self._extra: Tensor | None = None
        self._warned = False
        #: the epoch's running sums and counts, per tuple of value names (one per step kind)
        self.sums: dict[tuple[str, ...], Tensor] = {}
        self.counts: dict[tuple[str, ...], Tensor] = {}

    # -- per step ------------------------------------------------------------------------
    def before(self, step: Any) -> None:
        """Before the combiner's backward pass: forget its last Gram matrix; for a combiner that
        computes none, the extra Gram matrix at the representation (the graph is kept)."""
        self.combiner.diagnostics_gram = None
        self._extra = None
        if self.combiner.computes_gram() or not self.shared_representation:
            return
        from mtbench.combiners.taskgrads import rep_task_grads

        try:
            gram = rep_task_grads(step).gram().detach()
        except RuntimeError as e:  # (a loss that does not reach the representation): no Gram matrix
            if not self._warned:
                log.warning(f"mtbench: trainer.diagnostics: no gradients at the representation ({e}); no cosines")
                self._warned = True
            return
        group = getattr(step, "group", None)
        if group is not None:  # every rank's slice of the batch: the global batch's Gram matrix
            import torch.distributed as dist

            dist.all_reduce(gram, group=group)
            gram = gram / float(dist.get_world_size(group)) ** 2
        self._extra = gram

    def after(self, step: Any) -> None:
        """After the combiner's backward pass: add the step's values to the epoch's sums (one
        vector of the values per device they are on: a few small operations per step, no copy)."""
        combiner = self.combiner
        gram = combiner.diagnostics_gram if combiner.diagnostics_gram is not None else self._extra
        self._extra = None
        names: list[str] = []
        parts: list[Tensor] = []
        if gram is not None:
            stats = gram_statistics(gram)
            norms = stats.pop("gnorm")
            for key, value in stats.items():
                names.append(key)
                parts.append(value.reshape(1))
        weights = getattr(combiner, "last_weights", None)
        if isinstance(weights, Tensor) and weights.numel() > 0:
            for key, value in weight_statistics(weights).items():
                names.append(key)
                parts.append(value.reshape(1))
        for key, value in combiner.diagnostic_values().items():
            names.append(key)
            parts.append(value.detach().to(torch.float64).reshape(1))
        if gram is not None:  # (last: the widest part of the row)
            tasks = self.task_names if len(self.task_names) == norms.shape[0] else [str(i) for i in range(len(norms))]
            names += [f"gnorm_{n}" for n in tasks]
            parts.append(norms)
        if not parts:
            return
        by_device: dict[torch.device, tuple[list[str], list[Tensor]]] = {}
        at = 0
        for part in parts:  # (a part's names: one per element)
            n = part.numel()
            own_names, own_parts = by_device.setdefault(part.device, ([], []))
            own_names += names[at : at + n]
            own_parts.append(part.detach().reshape(-1).to(torch.float64))
            at += n
        for own_names, own_parts in by_device.values():  # no copy between devices: no synchronisation
            self._add(tuple(own_names), torch.cat(own_parts))

    def _add(self, key: tuple[str, ...], vec: Tensor) -> None:
        ok = ~torch.isnan(vec)
        vec = torch.where(ok, vec, torch.zeros_like(vec))
        if key in self.sums:  # (a resumed epoch's sums come back on the host)
            self.sums[key] = self.sums[key].to(vec.device) + vec
            self.counts[key] = self.counts[key].to(vec.device) + ok.to(torch.float64)
        else:
            self.sums[key] = vec
            self.counts[key] = ok.to(torch.float64)

    # -- per epoch -----------------------------------------------------------------------
    def epoch_values(self) -> dict[str, float]:
        """The epoch's columns ``diag_<name>`` (means over its steps; NaN where no step had the
        value), and a fresh start for the next epoch."""
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for names, vec in self.sums.items():
            for name, s, c in zip(names, vec.tolist(), self.counts[names].tolist()):
                sums[name] = sums.get(name, 0.0) + s
                counts[name] = counts.get(name, 0.0) + c
        self.sums, self.counts = {}, {}
        return {PREFIX + k: sums[k] / counts[k] if counts[k] > 0 else float("nan") for k in sums}

    def state_dict(self) -> list[dict[str, Any]]:
        """The epoch's running sums so far (plain lists: a checkpoint loads them with
        ``weights_only=True``)."""
        return [
            {"names": list(names), "sums": vec.tolist(), "counts": self.counts[names].tolist()}
            for names, vec in self.sums.items()
        ]

    def load_state_dict(self, state: list[dict[str, Any]] | None) -> None:
        self.sums, self.counts = {}, {}
        for part in state or []:
            names = tuple(str(n) for n in part["names"])
            self.sums[names] = torch.tensor(part["sums"], dtype=torch.float64)
            self.counts[names] = torch.tensor(part["counts"], dtype=torch.float64)

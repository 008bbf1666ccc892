"""Random GradDrop: GradDrop's sign choice made by a fair coin."""

from __future__ import annotations

from typing import Any

from mtbench.combiners.functional import random_graddrop
from mtbench.combiners.graddrop import GradDrop


class RandomGradDrop(GradDrop):
    """GradDrop with f(P) replaced by 1/2 (the paper's "random GradDrop" control).

    At each feature the positive-signed or the negative-signed tasks are kept with
    probability 1/2 whatever the gradients, still one sign per feature (per feature for
    the whole batch when ``batch_separated``). Options as GradDrop's except ``f`` and ``k``.
    """

    name = "random_graddrop"
    style = ("#17becf", "X")
    options = {k: v for k, v in GradDrop.options.items() if k not in ("f", "k")}

    def rule(self) -> dict[str, Any]:
        return {"f": "random"}

    def drop(self, grads, activation, step):
        return random_graddrop(grads, activation, **self.drop_options(step))

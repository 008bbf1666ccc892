"""An example combiner: the mean of the task losses instead of their sum.

Its config file, ``examples/configs/combiner/mean.yaml``, names the class in ``_target_`` (its
dotted path: the class may live in any importable module). Run it from the repository's root,
``examples/`` on the Python path and its configs on Hydra's search path::

    PYTHONPATH=examples mtbench combiner=mean 'hydra.searchpath=[file://examples/configs]'
    PYTHONPATH=examples mtbench -m combiner=baseline,mean 'hydra.searchpath=[file://examples/configs]'
"""

from __future__ import annotations

from typing import Any, ClassVar

from mtbench.combiners.base import Combiner, Step


class Mean(Combiner):
    """The mean of the task losses: a T-times smaller step than the baseline, unless
    ``scale`` (an option with its default in ``defaults``) makes up for it."""

    name: ClassVar[str] = "mean"
    #: the options of this combiner and their defaults (each becomes an attribute)
    defaults: ClassVar[dict[str, Any]] = {"scale": 1.0}

    def backward(self, step: Step) -> None:
        # step.losses holds the T per-task losses of this batch; leave the gradients in .grad
        (self.scale * step.losses.mean()).backward()

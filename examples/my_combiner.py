"""An example combiner: the mean of the task losses instead of their sum.

Run it next to the built-in combiners (``examples/`` on the Python path)::

    PYTHONPATH=examples mtbench combiner=baseline +combiner._target_=my_combiner.Mean

The class lives in any importable module: ``_target_`` is its dotted path.
"""

from __future__ import annotations

from mtbench.combiners.base import Combiner, Step


class Mean(Combiner):
    """The mean of the task losses: a T-times smaller step than the baseline, unless
    ``scale`` (an option with its default in ``defaults``) makes up for it."""

    name = "mean"
    #: the options of this combiner and their defaults (each becomes an attribute)
    defaults = {"scale": 1.0}

    def backward(self, step: Step) -> None:
        # step.losses holds the T per-task losses of this batch; leave the gradients in .grad
        (self.scale * step.losses.mean()).backward()

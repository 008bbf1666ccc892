"""mtbench: a benchmark of multitask gradient combiners.

The data flows one way, and the sub-packages follow it:

    data/       batch            (tasks: datasets, per-task losses)
    models/     shared trunk -> shared representation -> task heads
    combiners/  per-task losses -> parameter gradients
    train/      optimizer, training step and loop, evaluation
    metrics.py  error rate, max F1
    report/     metrics.json per run -> comparison tables
    cli.py      the ``mtbench`` command

    nn.py       GradDrop as a layer for any network
    api.py      any combiner in your own training loop (``mtbench.backward``)

Every sub-package imports only the ones before it (``tests/test_imports.py``); ``errors.py``,
``files.py`` (atomic writes), ``options.py`` (option checks), ``pretrained.py`` (ResNet weights)
and ``variant.py`` (a run's identity) sit below them all.
"""

from typing import Any

from mtbench.errors import MtbenchError

__version__ = "0.1.0"
__all__ = ["MtbenchError", "backward"]


def __getattr__(name: str) -> Any:
    # mtbench.backward: imported on first use (it needs torch and the combiners)
    if name == "backward":
        from mtbench.api import backward

        return backward
    raise AttributeError(f"module 'mtbench' has no attribute {name!r}")

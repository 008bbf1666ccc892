"""mtbench: a benchmark of multitask gradient combiners.

The data flows one way, and the sub-packages follow it:

    data/       batch            (tasks: datasets, per-task losses)
    models/     shared trunk -> shared representation -> task heads
    combiners/  per-task losses -> parameter gradients
    train/      optimizer, training step and loop, evaluation
    metrics.py  error rate, max F1
    report/     metrics.json per run -> comparison tables
    cli.py      the ``mtbench`` command

Every sub-package imports only the ones before it (``tests/test_imports.py``); ``files.py``
(atomic writes), ``options.py`` (option checks), ``pretrained.py`` (ResNet weights) and
``variant.py`` (a run's identity) sit below them all.
"""

__version__ = "0.1.0"


class MtbenchError(Exception):
    """An error caused by the user's input (config, files): reported as one line, no traceback."""

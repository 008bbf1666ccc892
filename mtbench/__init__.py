"""mtbench: a benchmark of multitask gradient combiners.

The data flows one way, and the sub-packages follow it:

    data/       batch            (tasks: datasets, per-task losses)
    models/     shared trunk -> shared representation -> task heads
    combiners/  per-task losses -> parameter gradients
    train/      optimizer, training loop, evaluation
    metrics.py  error rate, max F1
    report/     metrics.json per run -> comparison tables
"""

__version__ = "0.1.0"


class MtbenchError(Exception):
    """An error caused by the user's input (config, files): reported as one line, no traceback."""

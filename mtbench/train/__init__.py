"""Training: optimizer, schedule, the loop and evaluation."""

from mtbench.train.loop import TrainingFailed, train

__all__ = ["TrainingFailed", "train"]

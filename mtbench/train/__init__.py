"""Training: optimizer, schedule, the loop and evaluation."""

from mtbench.train.loop import CHECKPOINT, Interrupted, TrainingFailed, train

__all__ = ["CHECKPOINT", "Interrupted", "TrainingFailed", "train"]

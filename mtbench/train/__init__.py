"""Training: optimizer, schedule, the loop and evaluation."""

from mtbench.train.loop import AGAIN, CHECKPOINT, Interrupted, StopFlag, StopNow, TrainingFailed, train

__all__ = ["AGAIN", "CHECKPOINT", "Interrupted", "StopFlag", "StopNow", "TrainingFailed", "train"]

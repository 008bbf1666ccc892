"""Training: optimizer, schedule, the step, the loop and evaluation."""

from mtbench.train.loop import (
    AGAIN,
    CHECKPOINT,
    Interrupted,
    RunState,
    StopFlag,
    StopNow,
    Trainer,
    TrainingFailed,
    train,
)
from mtbench.train.step import TrainStep

__all__ = [
    "AGAIN",
    "CHECKPOINT",
    "Interrupted",
    "RunState",
    "StopFlag",
    "StopNow",
    "Trainer",
    "TrainStep",
    "TrainingFailed",
    "train",
]

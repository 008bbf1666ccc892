"""The progress bar: refreshed by time (a fake clock here), labelled img/s, closed before any message."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
from conftest import TINY


class FakeBar:
    """Stands in for tqdm: records the postfixes and whether the bar was closed."""

    made: list[FakeBar] = []

    def __init__(self, *args, total=0, initial=0, **kwargs):
        self.n, self.total, self.postfixes, self.closed = initial, total, [], False
        FakeBar.made.append(self)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfixes.append(dict(ordered_dict or {}, **kwargs))

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


class Clock:
    """A fake clock that moves ``tick`` seconds each time it is read."""

    def __init__(self, tick: float):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


@pytest.fixture
def trainer(monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from mtbench.train import loop

    FakeBar.made.clear()
    monkeypatch.setattr(loop, "tqdm", FakeBar)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("mtbench.configs", version_base="1.3"):
            cfg = compose("config", overrides=[*TINY, "trainer.epochs=1", "trainer.batch_size=8"])  # 24 steps
    finally:
        GlobalHydra.instance().clear()
    run = loop.Trainer(cfg)
    run.show = True
    return run


def test_bar_refreshes_by_time_and_labels_images_per_second(trainer):
    from mtbench.train import loop

    assert trainer.steps_per_epoch == 24 > loop.LOG_EVERY
    trainer.clock = Clock(0.0)  # time stands still: the step interval and the last step only
    trainer.train_epoch(SimpleNamespace(signum=None))
    (still,) = FakeBar.made
    assert len(still.postfixes) == 2 and still.closed and still.n == 24
    assert set(still.postfixes[-1]) == {"loss", "img/s"} and float(still.postfixes[-1]["img/s"]) > 0

    trainer.state.step = 0
    trainer.clock = Clock(loop.REFRESH_S / 4)  # a second every 4 steps (the clock is read twice per refresh)
    trainer.train_epoch(SimpleNamespace(signum=None))
    moving = FakeBar.made[1]
    assert 5 <= len(moving.postfixes) <= 9, len(moving.postfixes)


def test_bar_is_closed_before_the_interrupt_message(trainer):
    from mtbench.train import Interrupted

    trainer.clock = Clock(0.0)
    with pytest.raises(Interrupted):
        trainer.train_epoch(SimpleNamespace(signum=signal.SIGINT))
    (bar,) = FakeBar.made
    assert bar.closed and bar.n == 1


def test_train_closes_the_bar_when_the_run_fails(trainer, monkeypatch):
    from mtbench.train import loop

    def boom(*args, **kwargs):
        raise loop.TrainingFailed("non-finite loss")

    monkeypatch.setattr(trainer, "end_epoch", boom)
    monkeypatch.setattr(loop, "Trainer", lambda cfg, run_dir, world=None: trainer)
    monkeypatch.setattr(trainer, "train_epoch", lambda stop: setattr(trainer, "bar", FakeBar()) or boom())
    with pytest.raises(loop.TrainingFailed):
        loop.train(trainer.cfg)
    assert FakeBar.made and all(bar.closed for bar in FakeBar.made)

"""Dynamic weight average (mtbench/combiners/dwa.py) against the ratio of the last two epoch means."""

from __future__ import annotations

import math

import pytest
import torch
from loss_steps import backward_of

from mtbench.combiners import COMBINERS
from mtbench.errors import MtbenchError


def dwa_epochs(comb, epochs: list[list[list[float]]]) -> list[list[torch.Tensor]]:
    """Run the steps of each epoch (each step: th), calling end_epoch after each; the gradients."""
    grads = []
    for steps in epochs:
        grads.append([backward_of(comb, th) for th in steps])
        comb.end_epoch()
    return grads


def test_dwa_weights_follow_the_ratio_of_the_last_two_epoch_means():
    comb = COMBINERS["dwa"](2)  # temperature 2
    # epoch 1: L = (1, 6) and (0.25, 3) -> means (0.625, 4.5); epoch 2: L = (0.25, 3) twice -> (0.25, 3)
    g1, g2, g3 = dwa_epochs(comb, [[[1.0, 2.0], [0.5, 1.0]], [[0.5, 1.0], [0.5, 1.0]], [[1.0, 2.0]]])
    # the first two epochs: weights 1, the baseline's gradient (2 th_0, 3)
    assert [g.tolist() for g in g1 + g2] == [[2.0, 3.0], [1.0, 3.0], [1.0, 3.0], [1.0, 3.0]]
    # epoch 3: r = (0.25 / 0.625, 3 / 4.5) = (0.4, 2/3); w = 2 softmax(r / 2)
    e0, e1 = math.exp(0.4 / 2), math.exp((2 / 3) / 2)
    w = [2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1)]
    assert g3[0].tolist() == pytest.approx([2 * w[0], 3 * w[1]], rel=1e-12)
    assert comb.log_values() == pytest.approx({"w_min": w[0], "w_max": w[1]}, rel=1e-12)


def test_dwa_temperature_and_only_the_last_two_epochs_count():
    comb = COMBINERS["dwa"](2, temperature=0.5)
    # epoch means (1, 6), (0.25, 3), (0.25, 6): epoch 4 uses r = (0.25 / 0.25, 6 / 3) = (1, 2)
    g = dwa_epochs(comb, [[[1.0, 2.0]], [[0.5, 1.0]], [[0.5, 2.0]], [[1.0, 2.0]]])
    e0, e1 = math.exp(1 / 0.5), math.exp(2 / 0.5)
    assert g[3][0].tolist() == pytest.approx([2 * 2 * e0 / (e0 + e1), 3 * 2 * e1 / (e0 + e1)], rel=1e-12)


def test_dwa_resumed_mid_epoch_gives_the_same_weights():
    import io

    epochs = [[[1.0, 2.0], [0.5, 1.0]], [[0.5, 1.0], [0.7, 1.5]], [[1.0, 2.0], [0.9, 1.1]]]
    whole = COMBINERS["dwa"](2)
    expected = dwa_epochs(whole, epochs)
    first = COMBINERS["dwa"](2)
    dwa_epochs(first, epochs[:1])
    backward_of(first, epochs[1][0])  # mid-epoch 2: the checkpoint
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = COMBINERS["dwa"](2)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    got = [backward_of(resumed, epochs[1][1])]
    resumed.end_epoch()
    rest = dwa_epochs(resumed, epochs[2:])
    assert [g.tolist() for g in got + rest[0]] == [g.tolist() for g in expected[1][1:] + expected[2]]
    assert expected[2][0].tolist() != [2.0, 3.0]  # (epoch 3 is weighted)


@pytest.mark.parametrize("bad", [0, -1.0, "hot"])
def test_dwa_temperature_must_be_positive(bad):
    with pytest.raises(
        MtbenchError, match=rf"^combiner.temperature must be a positive number for combiner=dwa \(got {bad!r}\)$"
    ):
        COMBINERS["dwa"](2, temperature=bad)

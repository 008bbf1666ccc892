"""LearnedVector (mtbench/combiners/learned.py), the learned vector of uw, famo and imtl_l: created at
the first step, a checkpoint applied there; the three combiners' checkpoints keep the format and the
numbers that they had before it (fixed expectations), and resume to the same next weights."""

from __future__ import annotations

import io

import pytest
import torch

from mtbench.combiners import COMBINERS, Step
from mtbench.combiners.learned import LearnedVector

LOSSES = [[0.5, 2.0, 1.0], [0.4, 2.5, 0.9], [0.45, 1.0, 1.1], [0.3, 3.0, 0.7], [0.35, 2.0, 0.8]]

#: each combiner's checkpoint after LOSSES[:3] (float64, default options) and its weights on
#: LOSSES[3:], computed by each combiner's own implementation before LearnedVector existed
SAVED = {
    "uw": {
        "keys": ["log_var", "optimizer"],
        "vector": [-0.0046254445010066, 0.008634100299781674, 0.008944938041766307],
        "step": 3.0,
        "exp_avg": [0.013899429327293808, -0.35022855847879153, -0.13560341254298408],
        "exp_avg_sq": [1.2390440773314677e-05, 0.0064556943506113955, 0.0007593882505660498],
        "group": {"lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0, "amsgrad": False},
        "next": [
            [1.0046361583818737, 0.9914030664999998, 0.9910949488991828],
            [1.0071297459305084, 0.9886641473264687, 0.9883602179731306],
        ],
    },
    "famo": {
        "keys": ["logits", "optimizer", "prev_losses"],
        "vector": [-0.017301957196922527, 0.013051070272662986, -0.009524331369840466],
        "step": 2.0,  # the logits' first step is at the second combiner step
        "exp_avg": [-0.005170299236308378, 0.016565585629059867, -0.011420286380989011],
        "exp_avg_sq": [1.561193291182168e-05, 6.65183313982107e-05, 1.8846958092494486e-05],
        "group": {"lr": 0.025, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False},
        "next": [
            [1.9502608771278247, 0.20432870023931338, 0.8454104226328619],
            [1.8432575045024204, 0.33940873126327636, 0.8173337642343032],
        ],
    },
    "imtl_l": {
        "keys": ["scales", "optimizer"],
        "vector": [0.009002328162153652, -0.00826551116802824, 0.002065604572095294],
        "step": 3.0,
        "exp_avg": [-0.14912093784846817, 0.21473045010796496, 0.0012458394221706792],
        "exp_avg_sq": [0.0009072284116857834, 0.0032233986775819677, 2.048772254649069e-05],
        "group": {"lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0, "amsgrad": False},
        "next": [
            [1.0090429709867896, 0.9917685542487669, 1.0020677394028719],
            [1.01208772522637, 0.9892399003682003, 1.0035851674573824],
        ],
    },
}


def step_of(row) -> Step:
    losses = torch.tensor(row, dtype=torch.float64)
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses)  # type: ignore[arg-type]


def close(got: torch.Tensor, want: list[float]) -> None:
    assert got.dtype == torch.float64 and not got.requires_grad
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", list(SAVED))
def test_checkpoint_keeps_its_format_and_resumes_to_the_saved_updates(name):
    want = SAVED[name]
    full = COMBINERS[name](3)
    for row in LOSSES[:3]:
        full.task_weights(step_of(row))
    state = full.state_dict()
    assert list(state) == want["keys"]
    close(state[want["keys"][0]], want["vector"])
    opt = state["optimizer"]
    assert list(opt["state"]) == [0] and list(opt["state"][0]) == ["step", "exp_avg", "exp_avg_sq"]
    assert opt["state"][0]["step"].dtype == torch.float32 and float(opt["state"][0]["step"]) == want["step"]
    close(opt["state"][0]["exp_avg"], want["exp_avg"])
    close(opt["state"][0]["exp_avg_sq"], want["exp_avg_sq"])
    (group,) = opt["param_groups"]
    assert {k: group[k] for k in want["group"]} == want["group"] and group["params"] == [0]
    assert type(group["weight_decay"]) is type(want["group"]["weight_decay"])
    if name == "famo":
        close(state["prev_losses"], LOSSES[2])

    buffer = io.BytesIO()
    torch.save(state, buffer)
    fresh = COMBINERS[name](3)  # loaded before its first step: applied there
    stepped = COMBINERS[name](3)  # loaded after a step of its own: applied at once
    stepped.task_weights(step_of([9.0, 0.1, 3.0]))
    for comb in (fresh, stepped):
        buffer.seek(0)
        comb.load_state_dict(torch.load(buffer, weights_only=True))
    for row, w in zip(LOSSES[3:], want["next"], strict=True):
        a = full.task_weights(step_of(row))
        close(a, w)
        for comb in (fresh, stepped):
            assert torch.equal(comb.task_weights(step_of(row)), a)


def test_vector_is_created_at_the_first_step_and_a_checkpoint_waits_for_it():
    loaded: list[dict] = []
    vec = LearnedVector("v", 2, on_load=loaded.append, lr=0.1, weight_decay=0)
    assert vec.value is None and vec.state_dict() == {}
    vec.load_state_dict({})  # an empty checkpoint (a run saved before its first step) changes nothing
    assert vec.value is None
    bf16 = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    v = vec.ready(bf16)
    assert v.dtype == torch.float32 and v.tolist() == [0.0, 0.0] and vec.ready(bf16) is v
    vec.update(torch.tensor([1.0, -3.0]))  # Adam's first step: -lr * sign(g) (up to eps)
    torch.testing.assert_close(v.detach(), torch.tensor([-0.1, 0.1]))
    saved = vec.state_dict(extra={"more": 7})
    assert list(saved) == ["v", "optimizer", "more"] and saved["optimizer"]["param_groups"][0]["weight_decay"] == 0
    vec.update(torch.tensor([1.0, 1.0]))
    assert saved["v"].tolist() == pytest.approx([-0.1, 0.1])  # a snapshot: later steps leave it alone

    other = LearnedVector("v", 2, on_load=loaded.append, lr=0.1, weight_decay=0)
    other.load_state_dict(saved)
    assert other.value is None and loaded == []  # nothing to hold it yet
    other.ready(torch.zeros(2, dtype=torch.float64))
    assert other.value.dtype == torch.float64 and other.value.tolist() == pytest.approx([-0.1, 0.1])
    assert loaded == [saved]  # the owner's entries restored once the vector holds the checkpoint
    other.update(torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(other.value.detach(), vec.value.detach().double())

"""The same math in three places: the trainer's combiner (a ``Step`` on mtbench's
``MultiTaskModel``), the ``mtbench.nn.GradDrop`` layer in a model written outside mtbench, and
``mtbench.backward`` in a plain loop; on MLP heads and on the stock linear heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtbench
import mtbench.nn
from mtbench.combiners import COMBINERS, Step
from mtbench.models.multitask import LinearHeads, MultiTaskModel

T, B, D = 5, 12, 8


class MLPHeads(nn.Module):
    """T two-layer heads, outputs stacked [B, T] (not the stock linear heads)."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, 1)) for _ in range(T))

    def forward(self, rep):
        return torch.cat([h(rep) for h in self.heads], dim=1)

    def head(self, i, rep):
        return self.heads[i](rep)[:, 0]


def make(kind: str) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, D), nn.ReLU())
    heads = LinearHeads(D, T) if kind == "linear" else MLPHeads()
    return MultiTaskModel(trunk, heads, D)


def head_output(model: MultiTaskModel, i: int, rep: torch.Tensor) -> torch.Tensor:
    if isinstance(model.heads, LinearHeads):
        return model.heads(rep)[:, i]
    return model.heads.head(i, rep)


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 4, generator=g), (torch.rand(B, T, generator=g) > 0.5).float()


def task_losses(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(outputs, y, reduction="none").mean(0)


def grads(model: nn.Module) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def via_trainer(model, name, options, seed):
    x, y = batch()
    comb = COMBINERS[name](T, **options)
    comb.prepare(model)
    rep, outputs = model(x)
    step = Step(
        model,
        x,
        rep,
        outputs,
        task_losses(outputs, y),
        torch.Generator().manual_seed(seed),
        torch.Generator().manual_seed(seed + 1),
    )
    comb.backward(step)
    return grads(model), comb


def via_backward(model, name, options, seed, level_params=False):
    x, y = batch()
    rep = model.trunk(x)
    losses = [nn.functional.binary_cross_entropy_with_logits(head_output(model, i, rep), y[:, i]) for i in range(T)]
    comb = COMBINERS[name](T, **options) if options or level_params else name
    mtbench.backward(losses, rep, comb, generator=torch.Generator().manual_seed(seed), cpu_generator=torch.Generator().manual_seed(seed + 1),
                     shared_params=list(model.trunk.parameters()) if level_params else None)  # fmt: skip
    return grads(model)


def via_layer(model, layer_cls, options, seed):
    x, y = batch()
    layer = layer_cls(**options, generator=torch.Generator().manual_seed(seed))
    views = layer(model.trunk(x), T)
    losses = [
        nn.functional.binary_cross_entropy_with_logits(head_output(model, i, v), y[:, i]) for i, v in enumerate(views)
    ]
    sum(losses).backward()
    return grads(model)


def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("heads", ["mlp", "linear"])
@pytest.mark.parametrize(
    "name, options", [("graddrop", {}), ("graddrop", {"leak": 0.25, "f": "sigmoid", "k": 2.0}), ("random_graddrop", {})]
)
def test_trainer_layer_and_backward_agree_for_graddrop(heads, name, options):
    model = make(heads)
    trainer, _ = via_trainer(model, name, options, seed=11)
    layer_cls = mtbench.nn.GradDrop if name == "graddrop" else mtbench.nn.RandomGradDrop
    layer = via_layer(model, layer_cls, options, seed=11)
    own = via_backward(model, name, options, seed=11)
    close(trainer, layer)
    close(trainer, own)
    if heads == "mlp":  # the same autograd calls: no rounding at all between the layer and backward()
        assert all(torch.equal(u, v) for u, v in zip(layer, own))


@pytest.mark.parametrize("heads", ["mlp", "linear"])
@pytest.mark.parametrize("name, options", [("pcgrad", {"level": "representation"}), ("mgda", {"level": "representation"}),
                                           ("pcgrad", {"level": "params"}), ("mgda", {"level": "params"}), ("baseline", {}), ("clip", {})])  # fmt: skip
def test_backward_agrees_with_the_trainer(heads, name, options):
    model = make(heads)
    trainer, comb = via_trainer(model, name, options, seed=5)
    own = via_backward(model, name, options, seed=5, level_params=options.get("level") == "params")
    close(trainer, own)


def test_backward_returns_the_combiners_diagnostics_and_keeps_state_in_an_instance():
    model = make("mlp")
    comb = COMBINERS["gradnorm"](T, grad_at="representation")
    x, y = batch()
    for _ in range(2):
        rep = model.trunk(x)
        out = mtbench.backward(
            [nn.functional.binary_cross_entropy_with_logits(model.heads.head(i, rep), y[:, i]) for i in range(T)],
            rep,
            comb,
        )
        model.zero_grad()
    assert out == comb.log_values() and out  # GradNorm's weight range, after two steps of its own update


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda rep, ls: mtbench.backward([], rep, "graddrop"), "losses"),
        (lambda rep, ls: mtbench.backward(ls, rep.detach(), "graddrop"), "features"),
        (
            lambda rep, ls: mtbench.backward(ls, torch.randn(3, requires_grad=True), "graddrop"),
            "do not depend on features",
        ),
        (lambda rep, ls: mtbench.backward(ls, rep, "nosuch"), "combiner must be"),
        (lambda rep, ls: mtbench.backward(ls, rep, "gradnorm"), "keeps state across steps"),
        (lambda rep, ls: mtbench.backward(ls, rep, "gradpenalty"), "needs the network's inputs"),
        (lambda rep, ls: mtbench.backward(ls, rep, COMBINERS["mgda"](T + 1)), "built for"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(call, words):
    model = make("mlp")
    x, y = batch()
    rep = model.trunk(x)
    losses = [nn.functional.binary_cross_entropy_with_logits(model.heads.head(i, rep), y[:, i]) for i in range(T)]
    with pytest.raises(ValueError) as e:
        call(rep, losses)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("combiner", ["mgda", "pcgrad"])
def test_the_resnet_example_trains(tmp_path, combiner):
    """examples/resnet_mgda.py (shown on the docs page) runs as written, a few steps."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "resnet_mgda.py"
    args = [
        sys.executable,
        str(script),
        "--steps",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--combiner",
        combiner,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [x.split(":")[0] for x in proc.stdout.splitlines() if x.startswith("step ")] == ["step 1/2", "step 2/2"]


@pytest.mark.parametrize("name", ["mgda", "pcgrad"])
def test_gram_weighted_combiners_report_their_weight_range(name):
    """The range of the last step's task weights: what history.csv and the loggers record."""
    model = make("mlp")
    x, y = batch()
    rep = model.trunk(x)
    comb = COMBINERS[name](T, level="representation")
    info = mtbench.backward(
        [nn.functional.binary_cross_entropy_with_logits(model.heads.head(i, rep), y[:, i]) for i in range(T)], rep, comb
    )
    w = comb.last_weights
    assert w is not None and w.shape == (T,)
    assert info == {"w_min": float(w.min()), "w_max": float(w.max())} and info["w_min"] <= info["w_max"]

"""The contract every registered combiner keeps, and the registry's agreement with the config files.

For each combiner of ``mtbench.combiners.COMBINERS`` (each level of those with one): finite
gradients on every trainable parameter after ``backward``, with the stock linear heads and with
heads that are not (the general path); ``state_dict`` / ``load_state_dict`` round-trips through
``torch.save``; an unknown option is a one-line error. Each config file has the keys and the
defaults that its class declares.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mtbench.combiners import COMBINERS, Combiner, GramWeighted, Step, build_combiner
from mtbench.combiners.compose import Reweighted
from mtbench.errors import MtbenchError
from mtbench.models import LinearHeads, MultiTaskModel
from mtbench.variant import combiner_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
T, B, D_IN, D_REP = 3, 6, 4, 5


def cases() -> list[tuple[str, dict]]:
    out = []
    for name, cls in COMBINERS.items():
        if issubclass(cls, GramWeighted):
            out += [(name, {"level": "representation"}), (name, {"level": "params"})]
        else:
            out.append((name, {}))
    return out


CASES = cases()
IDS = [f"{n}-{o['level']}" if o else n for n, o in CASES]


class MLPHeads(nn.Module):
    """Non-linear heads: a hidden layer shared by the heads, then one logit per task."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(D_REP, 7)
        self.out = nn.Linear(7, T)

    def forward(self, rep):
        return self.out(torch.tanh(self.hidden(rep)))


class PlainLinearHeads(nn.Module):
    """The stock heads' function (``linear(rep.flatten(1))``) in a module the combiners do not
    recognise as linear heads: the general path must give the fast path's numbers."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, rep):
        return self.linear(rep.flatten(1))


def make_model(heads: str = "linear", seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_REP), nn.Tanh())
    model = MultiTaskModel(trunk, LinearHeads(D_REP, T), rep_dim=D_REP)
    if heads == "mlp":
        model.heads = MLPHeads()
    elif heads == "plain":
        model.heads = PlainLinearHeads(model.heads.linear)
    return model.double()


def make_step(model, comb: Combiner, seed: int = 1, gen_seed: int = 0) -> Step:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64).requires_grad_(comb.needs_input_grad)
    y = (torch.rand(B, T, generator=g) < 0.5).double()
    rep, out = model(x)
    losses = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)
    step = Step(
        model, x, rep, out, losses, torch.Generator().manual_seed(gen_seed), torch.Generator().manual_seed(gen_seed)
    )
    if comb.needs_second_batch:  # SDMGrad, MoDo: a second, independent batch of the same size
        x2 = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
        y2 = (torch.rand(B, T, generator=g) < 0.5).double()
        step.inputs2, (step.rep2, step.outputs2) = x2, model(x2)
        step.losses2 = F.binary_cross_entropy_with_logits(step.outputs2, y2, reduction="none").mean(0)
    return step


def grads_after(model, comb: Combiner, seed: int = 1, gen_seed: int = 0) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    comb.backward(make_step(model, comb, seed, gen_seed))
    return [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
@pytest.mark.parametrize("heads", ["linear", "mlp"])
def test_backward_gives_finite_gradients_to_every_trainable_parameter(name, options, heads):
    model = make_model(heads)
    comb = COMBINERS[name](T, **options)
    comb.prepare(model)
    for step in range(2):
        grads = grads_after(model, comb, seed=1 + step)
        assert all(g is not None for g in grads), f"{name}: a trainable parameter got no gradient"
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        for p in model.parameters():  # nothing was left waiting for a second backward
            assert p.grad is None or p.grad.shape == p.shape


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_general_path_gives_the_fast_paths_numbers(name, options):
    fast_model, plain_model = make_model("linear"), make_model("plain")
    assert fast_model.linear_heads() is not None and plain_model.linear_heads() is None
    fast, plain = COMBINERS[name](T, **options), COMBINERS[name](T, **options)
    fast.prepare(fast_model)
    plain.prepare(plain_model)
    for step in range(2):
        a, b = grads_after(fast_model, fast, seed=1 + step), grads_after(plain_model, plain, seed=1 + step)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_state_round_trips_through_a_checkpoint(name, options):
    model = make_model()
    comb = COMBINERS[name](T, **options)
    comb.prepare(model)
    for step in range(3):
        grads_after(model, comb, seed=1 + step)
    buffer = io.BytesIO()
    torch.save(comb.state_dict(), buffer)
    buffer.seek(0)
    other_model = make_model()  # (a model of its own: its forward hooks feed this combiner only)
    other_model.load_state_dict(model.state_dict())
    other = COMBINERS[name](T, **options)
    other.prepare(other_model)
    other.load_state_dict(torch.load(buffer, weights_only=False))
    for step in range(2):  # the same next steps: the same gradients, the same logged values
        a = grads_after(model, comb, seed=7 + step, gen_seed=3)
        b = grads_after(other_model, other, seed=7 + step, gen_seed=3)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
        assert other.log_values() == comb.log_values()


@pytest.mark.parametrize("name", list(COMBINERS))
def test_an_unknown_option_is_one_line_naming_it(name):
    with pytest.raises(MtbenchError) as err:
        COMBINERS[name](T, no_such_option=1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("combiner.no_such_option is not an option of combiner=" + name)
    for option in COMBINERS[name].options:
        assert option in message


@pytest.mark.parametrize("name", list(COMBINERS))
def test_every_option_is_declared_with_a_doc(name):
    cls = COMBINERS[name]
    assert cls.defaults == {k: o.default for k, o in cls.options.items()}
    for key, option in cls.options.items():
        assert option.doc and "\n" not in option.doc, f"{name}.{key} has no one-line doc"


@pytest.mark.parametrize("name", list(COMBINERS))
def test_config_file_has_the_declared_options_and_defaults(name):
    cls = COMBINERS[name]
    raw = yaml.safe_load((CONFIGS / "combiner" / f"{name}.yaml").read_text())
    assert raw["name"] == name and "_target_" not in raw
    composed = combiner_config(name)
    assert composed is not None
    options = {k: v for k, v in composed.items() if k != "name"}
    assert set(options) == set(cls.options)
    if issubclass(cls, Reweighted):  # each piece is its own config file, with its own declarations
        for piece in (cls.weighting_cls, cls.combine_cls):
            own = {k: v for k, v in options[piece.name].items() if k != "name"}
            assert own == piece.defaults
            assert options[piece.name].get("name", piece.name) == piece.name
    else:
        assert options == cls.defaults


def test_composed_gradnorm_graddrop_builds_its_pieces_with_their_file_options():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(combiner_config("gradnorm_graddrop"))
    comb = build_combiner(cfg, T, default_leak=[0.5, 0.0, 0.0])
    assert comb.weighting.opts == COMBINERS["gradnorm"].defaults
    assert comb.combine.leak == [0.5, 0.0, 0.0]
    assert {k: v for k, v in comb.combine.opts.items() if k != "leak"} == {
        k: v for k, v in COMBINERS["graddrop"].defaults.items() if k != "leak"
    }


def test_a_user_combiner_with_a_plain_defaults_dict():
    class Mean(Combiner):
        name = "mean"
        defaults = {"scale": 1.0}

        def backward(self, step: Step) -> None:
            (self.scale * step.losses.mean()).backward()

    assert set(Mean.options) == {"scale"} and Mean.options["scale"].default == 1.0
    model = make_model()
    comb = Mean(T, scale=2.0)
    assert comb.scale == 2.0 and Mean(T).scale == 1.0
    grads = grads_after(model, comb)
    st = make_step(model, comb)
    expected = torch.autograd.grad(2.0 * st.losses.mean(), list(model.parameters()))
    for u, v in zip(grads, expected):
        torch.testing.assert_close(u, v)
    with pytest.raises(MtbenchError, match="combiner.scal is not an option of combiner=mean; its options are: scale"):
        Mean(T, scal=1.0)


def test_a_subclass_with_plain_defaults_keeps_the_inherited_checks():
    from mtbench.combiners.graddrop import GradDrop

    class Leaky(GradDrop):
        name = "leaky"
        defaults = {**GradDrop.defaults, "leak": 0.5}

    assert Leaky(T).leak == 0.5
    with pytest.raises(MtbenchError, match=r"combiner.leak values must be numbers in \[0, 1\] for combiner=leaky"):
        Leaky(T, leak=2.0)


@pytest.mark.parametrize("level", ["representation", "params"])
def test_a_gram_weighted_combiner_is_its_weights_only(level):
    """Unit weights from any Gram matrix: the plain sum of the task gradients, the baseline."""
    from mtbench.options import Option

    seen = []

    class Sum(GramWeighted):
        name = "sum"
        options = {**GramWeighted.options, "scale": Option(1.0, "factor of every weight")}

        def gram_weights(self, gram, step):
            seen.append(gram)
            return torch.full((gram.shape[0],), self.scale, dtype=torch.float64)

    model = make_model()
    comb = Sum(T, level=level, scale=2.0)
    comb.prepare(model)
    got = grads_after(model, comb)
    st = make_step(model, comb)
    n_shared = len(model.shared_parameters())
    trunk = torch.autograd.grad(2.0 * st.losses.sum(), model.shared_parameters(), retain_graph=True)
    heads = torch.autograd.grad(st.losses.sum(), model.head_parameters())
    for u, v in zip(got, list(trunk) + list(heads)):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
    assert len(got) == n_shared + len(heads)
    (gram,) = seen
    assert gram.dtype == torch.float64 and gram.shape == (T, T)
    if level == "params":
        per_task = torch.stack(
            [
                torch.cat(
                    [
                        g.flatten()
                        for g in torch.autograd.grad(make_step(model, comb).losses[i], model.shared_parameters())
                    ]
                )
                for i in range(T)
            ]
        )
        torch.testing.assert_close(gram, per_task @ per_task.T, rtol=1e-12, atol=1e-14)


def test_the_sweeps_are_read_from_the_registry():
    from omegaconf import OmegaConf

    from mtbench.combiners import PAPER

    raw = yaml.safe_load((CONFIGS / "config.yaml").read_text())
    assert raw["hydra"]["sweeper"]["params"]["combiner"] == "${mtbench_combiners:paper}"  # no list restated
    zoo = yaml.safe_load((CONFIGS / "experiment" / "zoo.yaml").read_text())
    assert zoo["hydra"]["sweeper"]["params"]["combiner"] == "${mtbench_combiners:all}"
    cfg = OmegaConf.create(
        {"paper": "${mtbench_combiners:paper}", "all": "${mtbench_combiners:all}", "bare": "${mtbench_combiners:}"}
    )
    assert cfg.all.split(",") == cfg.bare.split(",") == list(COMBINERS)
    assert cfg.paper.split(",") == list(PAPER) == list(COMBINERS)[: len(PAPER)] and len(PAPER) == 9
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(
        InterpolationResolutionError,
        match=r"MtbenchError .*mtbench_combiners:mine\} is not a selection of combiners; choose one of: paper, all",
    ):
        _ = OmegaConf.create({"x": "${mtbench_combiners:mine}"}).x

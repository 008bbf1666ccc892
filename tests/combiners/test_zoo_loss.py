"""The loss-level combiners (uw, dwa, rlw, gls, famo) against their papers' update rules on
two-task cases whose numbers are computed here by hand, and end to end from the CLI.

Each case trains two scalar parameters th = (th_0, th_1) whose task losses are explicit
(e.g. L = (th_0^2, 3 th_1)), so the expected gradient th.grad = sum_i w_i dL_i/dth is a
closed-form number."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli, run_dir

from mtbench.combiners import COMBINERS, PAPER, Step
from mtbench.errors import MtbenchError

LOSS_LEVEL = ["uw", "dwa", "rlw", "gls", "famo"]


def scalar_step(th: torch.Tensor, losses: torch.Tensor, gen_seed: int = 0) -> Step:
    """A step whose 'model' is the two parameters th (no trunk, no heads: the loss-level
    combiners need the losses only)."""
    g = torch.Generator().manual_seed(gen_seed)
    return Step(model=None, inputs=None, rep=None, outputs=None, losses=losses, generator=g, cpu_generator=g)  # type: ignore[arg-type]


def backward_of(comb, values, gen_seed: int = 0) -> torch.Tensor:
    """th.grad after ``comb.backward`` on L = (th_0^2, 3 th_1) at th = values."""
    th = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    losses = torch.stack([th[0] ** 2, 3 * th[1]])
    comb.backward(scalar_step(th, losses, gen_seed))
    return th.grad


def test_loss_level_combiners_come_after_the_papers_nine():
    names = list(COMBINERS)
    assert names[: len(PAPER)] == list(PAPER)
    for name in LOSS_LEVEL:
        assert names.index(name) >= len(PAPER)


# -- gls ---------------------------------------------------------------------------------------


def test_gls_is_t_times_the_geometric_mean():
    # th = (1, 2): L = (1, 6), G = sqrt(6), w = (G / 1, G / 6); dL_0/dth_0 = 2, dL_1/dth_1 = 3
    grad = backward_of(COMBINERS["gls"](2), [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * math.sqrt(6), 3 * math.sqrt(6) / 6], rel=1e-12)
    # the same as the gradient of 2 sqrt(L_0 L_1) = 2 sqrt(3 th_0^2 th_1) = 2 sqrt(3) |th_0| sqrt(th_1)
    assert grad.tolist() == pytest.approx(
        [2 * math.sqrt(3) * math.sqrt(2), 2 * math.sqrt(3) / (2 * math.sqrt(2))], rel=1e-12
    )
    # equal losses: the baseline's gradient (weights 1 each)
    th = torch.tensor([2.0, 4.0 / 3.0], dtype=torch.float64, requires_grad=True)  # L = (4, 4)
    COMBINERS["gls"](2).backward(scalar_step(th, torch.stack([th[0] ** 2, 3 * th[1]])))
    assert th.grad.tolist() == pytest.approx([4.0, 3.0], rel=1e-12)


# -- rlw ---------------------------------------------------------------------------------------


def rlw_weights(distribution: str, t: int, draws: int, gen_seed: int = 0) -> torch.Tensor:
    """``draws`` successive weight vectors [draws, t] from one generator (equal losses)."""
    comb = COMBINERS["rlw"](t, distribution=distribution)
    g = torch.Generator().manual_seed(gen_seed)
    out = []
    for _ in range(draws):
        losses = torch.ones(t, dtype=torch.float64)
        out.append(comb.task_weights(Step(None, None, None, None, losses, g, g)))  # type: ignore[arg-type]
    return torch.stack(out)


def test_rlw_normal_is_t_times_the_softmax_of_normal_draws_from_the_step_generator():
    # the paper's draw: x ~ N(0, I), lambda = softmax(x); mtbench's weights are T lambda
    x = torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    e = [math.exp(v) for v in x]
    w = [2 * v / sum(e) for v in e]
    grad = backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=5)  # dL/dth = (2 th_0, 3) = (2, 3)
    assert grad.tolist() == pytest.approx([2 * w[0], 3 * w[1]], rel=1e-12)
    # randomness from the step's generator only: the same seed, the same weights; another, others
    assert backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=5).tolist() == grad.tolist()
    assert backward_of(COMBINERS["rlw"](2), [1.0, 2.0], gen_seed=6).tolist() != grad.tolist()


def test_rlw_uniform_is_t_times_the_softmax_of_uniform_draws():
    x = torch.rand(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    e = [math.exp(v) for v in x]
    grad = backward_of(COMBINERS["rlw"](2, distribution="uniform"), [1.0, 2.0], gen_seed=5)
    assert grad.tolist() == pytest.approx([2 * 2 * e[0] / sum(e), 3 * 2 * e[1] / sum(e)], rel=1e-12)


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli"])
def test_rlw_weights_sum_to_t(distribution):
    w = rlw_weights(distribution, 3, 200)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.full((200,), 3.0, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_rlw_bernoulli_and_constrained_bernoulli_draw_their_supports_evenly():
    n = 3000
    # bernoulli, two tasks: (1,0), (0,1), (1,1) with probability 1/3 each -> w = (2,0), (0,2), (1,1)
    w = rlw_weights("bernoulli", 2, n)
    seen = {tuple(r): 0 for r in [(2.0, 0.0), (0.0, 2.0), (1.0, 1.0)]}
    for row in w.tolist():
        seen[tuple(row)] += 1  # (a KeyError if any other vector is drawn)
    assert all(abs(c / n - 1 / 3) < 0.04 for c in seen.values()), seen
    # constrained_bernoulli, three tasks: one task at weight 3, each with probability 1/3
    w = rlw_weights("constrained_bernoulli", 3, n)
    assert ((w == 0) | (w == 3)).all() and ((w == 3).sum(1) == 1).all()
    assert all(abs(f - 1 / 3) < 0.04 for f in ((w == 3).double().mean(0)).tolist())
    # beyond 62 tasks the fallback draw: still weights summing to T on the drawn tasks
    w = rlw_weights("bernoulli", 70, 5)
    assert ((w == 0) | (w > 0)).all() and torch.allclose(w.sum(1), torch.full((5,), 70.0, dtype=torch.float64))


def test_rlw_dirichlet_is_uniform_on_the_simplex():
    # Dirichlet(1, 1): lambda_0 ~ U(0, 1), i.e. w_0 / 2 has mean 1/2 and variance 1/12
    w = rlw_weights("dirichlet", 2, 4000)[:, 0] / 2
    assert abs(float(w.mean()) - 0.5) < 0.02 and abs(float(w.var()) - 1 / 12) < 0.01
    assert abs(float((w < 0.25).double().mean()) - 0.25) < 0.03


def test_rlw_unknown_distribution_is_one_line_naming_the_choices():
    with pytest.raises(MtbenchError) as err:
        COMBINERS["rlw"](2, distribution="gaussian")
    assert str(err.value) == (
        "combiner.distribution='gaussian' is not allowed for combiner=rlw; "
        "choose one of: normal, uniform, dirichlet, bernoulli, constrained_bernoulli"
    )


# -- uw ----------------------------------------------------------------------------------------


def test_uw_first_steps_follow_the_papers_objective():
    lr = 0.1
    comb = COMBINERS["uw"](2, weight_lr=lr)
    # step 1: s = (0, 0), w = exp(-s) = (1, 1): the baseline's gradient (2 th_0, 3) = (2, 3)
    assert backward_of(comb, [1.0, 2.0]).tolist() == pytest.approx([2.0, 3.0], rel=1e-12)
    # the gradient of exp(-s) L + s/2 in s at L = (1, 6): 1/2 - L = (-0.5, -5.5); Adam's first step
    # is lr * g / (|g| + eps) against g (bias corrections cancel), so s = lr * (|g| / (|g| + 1e-8))
    s = [lr * 0.5 / (0.5 + 1e-8), lr * 5.5 / (5.5 + 1e-8)]
    torch.testing.assert_close(comb.log_var.detach(), torch.tensor(s, dtype=torch.float64), rtol=1e-12, atol=0)
    # step 2 at th = (1, 2): w = exp(-s)
    grad = backward_of(comb, [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * math.exp(-s[0]), 3 * math.exp(-s[1])], rel=1e-12)
    assert comb.log_values() == pytest.approx({"w_min": math.exp(-s[1]), "w_max": math.exp(-s[0])}, rel=1e-12)


def test_uw_weights_come_to_rest_at_one_over_twice_the_loss():
    # minimum of exp(-s) L + s/2 in s: exp(-s) = 1 / (2 L); here L = (1, 6): w = (1/2, 1/12)
    comb = COMBINERS["uw"](2, weight_lr=0.02)
    for _ in range(1500):
        backward_of(comb, [1.0, 2.0])
    w = torch.exp(-comb.log_var.detach())
    assert w.tolist() == pytest.approx([0.5, 1 / 12], rel=0.05)


def test_uw_bad_learning_rate_is_one_line():
    with pytest.raises(
        MtbenchError, match=r"^combiner.weight_lr must be a positive number for combiner=uw \(got -1\)$"
    ):
        COMBINERS["uw"](2, weight_lr=-1)


# -- dwa ---------------------------------------------------------------------------------------


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


# -- famo --------------------------------------------------------------------------------------


def test_famo_first_steps_follow_the_papers_update():
    lr = 0.1
    comb = COMBINERS["famo"](2, weight_lr=lr)
    # step 1, L = (1, 6), xi = 0, z = (1/2, 1/2): w = 2 (z / L) / sum(z / L) = (12/7, 2/7)
    grad = backward_of(comb, [1.0, 2.0])
    assert grad.tolist() == pytest.approx([2 * 12 / 7, 3 * 2 / 7], rel=1e-7)
    # step 2, L = (0.25, 3): delta = log(1/0.25), log(6/3) = (2 log 2, log 2); z . delta = 1.5 log 2;
    # the logits' gradient z * (delta - z . delta) = (log 2 / 4, -log 2 / 4), Adam's first step against
    # its sign: xi = (-lr, lr); z = softmax(xi); w = 2 (z / L) / sum(z / L)
    grad = backward_of(comb, [0.5, 1.0])
    z0, z1 = math.exp(-lr) / (math.exp(-lr) + math.exp(lr)), math.exp(lr) / (math.exp(-lr) + math.exp(lr))
    q0, q1 = z0 / 0.25, z1 / 3
    w = [2 * q0 / (q0 + q1), 2 * q1 / (q0 + q1)]
    assert comb.logits.detach().tolist() == pytest.approx([-lr, lr], rel=1e-6)
    assert grad.tolist() == pytest.approx([w[0] * 2 * 0.5, w[1] * 3], rel=1e-6)
    # the task whose loss fell faster (task 0, 4x against 2x) lost weight against z = 1/2 each
    assert z0 < 0.5 < z1
    assert sum(w) == pytest.approx(2.0, rel=1e-12)


def test_famo_weights_sum_to_t_and_gamma_pulls_the_logits_back():
    comb = COMBINERS["famo"](2, weight_lr=0.1, gamma=0.5)
    backward_of(comb, [1.0, 2.0])
    backward_of(comb, [0.5, 1.0])  # xi = (-0.1, 0.1)
    size = float(comb.logits.detach().abs().sum())
    for _ in range(30):  # the same losses again and again: delta = 0, only the decay moves xi
        backward_of(comb, [0.5, 1.0])
    assert float(comb.logits.detach().abs().sum()) < size / 2
    assert float(comb.last_weights.sum()) == pytest.approx(2.0, rel=1e-12)


def test_famo_bad_options_are_one_line():
    with pytest.raises(MtbenchError, match=r"^combiner.gamma must be a finite number >= 0 \(got -0.1\)$"):
        COMBINERS["famo"](2, gamma=-0.1)
    with pytest.raises(
        MtbenchError, match=r"^combiner.weight_lr must be a positive number for combiner=famo \(got 0\)$"
    ):
        COMBINERS["famo"](2, weight_lr=0)


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_sweep(tmp_path_factory):
    """`mtbench -m combiner=<the loss-level ones>` on the tiny shapes40 config, 3 epochs (DWA's
    weights move from the third)."""
    cwd = tmp_path_factory.mktemp("zoo_loss")
    args = [
        "-m",
        f"combiner={','.join(LOSS_LEVEL)}",
        *[o for o in TINY if not o.startswith("trainer.epochs")],
        "trainer.epochs=3",
    ]
    proc = run_cli("mtbench", args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "results" / "shapes40", proc


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_each_runs_end_to_end_from_the_cli(zoo_sweep, name):
    folder, proc = zoo_sweep
    run = run_dir(folder, name)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed" and m["combiner"] == name and m["epochs"] == 3
    assert 0 <= m["test"]["error_rate"] <= 100
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    lo, hi = history["combiner_w_min"], history["combiner_w_max"]
    assert ((lo > 0) & (lo <= hi)).all()
    if name == "dwa":  # weights 1 in the first two epochs, then the loss ratios' softmax
        assert list(lo[:2]) == [1.0, 1.0] and list(hi[:2]) == [1.0, 1.0]
        assert lo[2] < 1.0 < hi[2]
    if name in ("uw", "rlw", "gls", "famo"):
        assert lo.iloc[-1] < hi.iloc[-1]
    assert f"| {name} |" in proc.stdout  # a row of the sweep's table


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "combiner=dwa combiner.temperature=0",
            "combiner.temperature must be a positive number for combiner=dwa (got 0)",
        ),
        (
            "combiner=rlw combiner.distribution=gaussian",
            (
                "combiner.distribution='gaussian' is not allowed for combiner=rlw; choose one of: "
                "normal, uniform, dirichlet, bernoulli, constrained_bernoulli"
            ),
        ),
    ],
)
def test_bad_options_from_the_cli_are_one_line(tmp_path, override, message):
    proc = run_cli("mtbench", [*override.split(), *TINY], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert len(errors) == 1, proc.stderr[-3000:]


def test_zoo_preset_sweeps_every_combiner_and_composes_with_another_task():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            plain = compose(config_name="config", return_hydra_config=True)
            zoo = compose(config_name="config", overrides=["experiment=zoo"], return_hydra_config=True)
            celeba = compose(
                config_name="config", overrides=["experiment=zoo", "task=celeba"], return_hydra_config=True
            )
    finally:
        GlobalHydra.instance().clear()
    assert str(plain.hydra.sweeper.params.combiner).split(",") == list(PAPER)
    for cfg, task in ((zoo, "shapes40"), (celeba, "celeba")):
        assert str(cfg.hydra.sweeper.params.combiner).split(",") == list(COMBINERS)
        assert set(LOSS_LEVEL) <= set(COMBINERS)
        assert str(cfg.hydra.sweeper.params.seed) == "0,1,2"
        assert cfg.task.name == task and cfg.name == f"{task}_zoo"
    assert celeba.model.name == plain_model_of("celeba")


def plain_model_of(task: str) -> str:
    """The model a task's own config picks, composed without the preset."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
            return str(compose(config_name="config", overrides=[f"task={task}"]).model.name)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_bf16_losses_make_float32_weights_and_state(name):
    """Losses computed under bf16 autocast: the weights and the learned state stay float32."""
    comb = COMBINERS[name](3)
    p = torch.ones(3, requires_grad=True)
    for _ in range(3):
        losses = (p * torch.tensor([0.5, 1.0, 2.0])).to(torch.bfloat16)
        comb.backward(scalar_step(p, losses))
        comb.end_epoch()
    assert comb.last_weights.dtype == torch.float32 and torch.isfinite(p.grad).all()
    tensors = [v for v in comb.state_dict().values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in tensors)

"""SDMGrad, MoDo (two independent mini-batches per step) and MoCo (tracked per-task gradients):
the math against torchjd 0.18 (SDMGrad, MoDo) and an independent reimplementation of LibMTL's
MoCo on the same float64 inputs, adversarial ones included; the combiners against their pure
functions; the trainer's second batch; the one-line option errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_cli, run_dir
from torch import nn

import mtbench
from mtbench.combiners import COMBINERS, Step
from mtbench.combiners import functional as Fn
from mtbench.errors import MtbenchError
from mtbench.models.multitask import LinearHeads, MultiTaskModel
from mtbench.train.batches import second_batch

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T, D, B = 3, 7, 5


def _adversarial() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (J1, J2) of per-task gradient rows, float64."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    base = r(T, D)
    cases = {
        "random": (r(T, D), r(T, D)),
        "correlated": (base + 0.1 * r(T, D), base + 0.1 * r(T, D)),
        "zero row": (torch.cat([r(2, D), torch.zeros(1, D, dtype=torch.float64)]), r(T, D)),
        "opposing": (torch.stack([base[0], -base[0], base[1]]), torch.stack([base[0], -base[0], base[1]])),
        "rank one": (torch.outer(r(T), base[0]), torch.outer(r(T), base[0])),
        "huge": (1e8 * r(T, D), 1e8 * r(T, D)),
        "tiny": (1e-8 * r(T, D), 1e-8 * r(T, D)),
        "one task": (r(1, D), r(1, D)),
        "all zero": (torch.zeros(T, D, dtype=torch.float64), torch.zeros(T, D, dtype=torch.float64)),
    }
    return cases


CASES = _adversarial()


def test_simplex_projection_matches_torchjd():
    from torchjd.aggregation._utils.simplex import project_onto_simplex

    g = torch.Generator().manual_seed(3)
    for v in [torch.randn(6, generator=g, dtype=torch.float64) * s for s in (1e-6, 1.0, 1e6)] + [
        torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),
        torch.tensor([5.0], dtype=torch.float64),
    ]:
        ours = Fn.project_onto_simplex(v)
        assert torch.allclose(ours, project_onto_simplex(v), atol=1e-12)
        assert ours.min() >= 0 and abs(float(ours.sum()) - 1) < 1e-12


@pytest.mark.parametrize("case", list(CASES))
def test_sdmgrad_weights_match_torchjd_over_several_steps(case):
    j1, j2 = CASES[case]
    ref = torchjd_aggregation.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3)
    start = None
    for step in range(3):
        a = Fn.two_batch_matrix(j1 * (1 + step), j2)
        ours, start = Fn.sdmgrad_weights(a, start, 10.0, 0.5, 20, 0.3)
        theirs = ref(a)
        assert torch.allclose(ours, theirs, atol=1e-10, rtol=1e-8), (case, step, ours, theirs)
        assert abs(float(ours.sum()) - 1) < 1e-10


@pytest.mark.parametrize("case", list(CASES))
def test_modo_weights_match_torchjd_over_several_steps(case):
    j1, j2 = CASES[case]
    ref = torchjd_aggregation.MoDoWeighting(gamma=0.1, rho=0.1)
    lam = None
    for step in range(3):
        a = Fn.two_batch_matrix(j1, j2 * (1 + step))
        lam = Fn.modo_weights(a, lam, 0.1, 0.1)
        theirs = ref(a)
        assert torch.allclose(lam, theirs, atol=1e-10, rtol=1e-8), (case, step, lam, theirs)


def test_sdmgrad_and_modo_updates_are_t_times_the_weights_on_the_batch_mean():
    j1, j2 = CASES["random"]
    w, _ = Fn.sdmgrad_weights(j1 @ j2.T)
    assert torch.allclose(Fn.sdmgrad(j1, j2), T * w @ ((j1 + j2) / 2))
    lam = Fn.modo_weights(j1 @ j2.T)
    assert torch.allclose(Fn.modo(j1, j2), T * lam @ ((j1 + j2) / 2))
    g = torch.randn(D, dtype=torch.float64)  # the scale: T equal gradients give T g
    same = g.expand(T, D)
    assert torch.allclose(Fn.sdmgrad(same, same), T * g) and torch.allclose(Fn.modo(same, same), T * g)


def _libmtl_moco(grads_per_step, losses_per_step, beta, beta_sigma, gamma, gamma_sigma, rho):
    """LibMTL's MoCo.backward, rewritten as a loop over its steps (plain float64)."""
    y = torch.zeros_like(grads_per_step[0])
    lambd = torch.ones(y.shape[0], dtype=torch.float64) / y.shape[0]
    out = []
    for step, (grads, losses) in enumerate(zip(grads_per_step, losses_per_step), start=1):
        grads = grads.clone()
        for tn in range(grads.shape[0]):
            grads[tn] = grads[tn] / (grads[tn].norm() + 1e-8) * losses[tn]
        y = y - (beta / step**beta_sigma) * (y - grads)
        lambd = F.softmax(
            lambd - (gamma / step**gamma_sigma) * (y @ y.t() + rho * torch.eye(y.shape[0], dtype=y.dtype)) @ lambd, -1
        )
        out.append(y.t() @ lambd)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_moco_matches_libmtl_over_several_steps(case):
    j1, j2 = CASES[case]
    steps = [j1, j2, j1 - j2, j1]
    losses = [torch.tensor([0.5, 2.0, 1.0][: j1.shape[0]], dtype=torch.float64) * (k + 1) for k in range(4)]
    ref = _libmtl_moco(steps, losses, 0.5, 0.5, 0.1, 0.5, 0.3)
    y = lam = None
    for k, (g, loss) in enumerate(zip(steps, losses), start=1):
        d = Fn.moco(g, loss, y, lam, k, 0.5, 0.5, 0.1, 0.5, 0.3)
        y, lam = Fn.moco_update(g, loss, y, lam, k, 0.5, 0.5, 0.1, 0.5, 0.3)
        scale = max(1.0, float(ref[k - 1].abs().max()))
        assert torch.allclose(d / g.shape[0], ref[k - 1], atol=1e-12 * scale, rtol=1e-10), (case, k)


def test_moco_two_task_hand_check():
    """Two orthogonal tasks, losses 1 and 2, beta 0.5, gamma 0.1, sigmas 0, rho 0, step 1:
    y = 0.5 * [e1, 2 e2]; Y Y^T = diag(0.25, 1); lambda = softmax(0.5 - 0.1 * [0.125, 0.5])."""
    g = torch.tensor([[3.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y, lam = Fn.moco_update(g, losses, None, None, 1, 0.5, 0.0, 0.1, 0.0, 0.0)
    assert torch.allclose(y, torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64))
    z = torch.tensor([0.5 - 0.0125, 0.5 - 0.05], dtype=torch.float64)
    expected = torch.exp(z) / torch.exp(z).sum()
    assert torch.allclose(lam, expected)
    d = Fn.moco(g, losses, None, None, 1, 0.5, 0.0, 0.1, 0.0, 0.0)
    assert torch.allclose(d, 2 * torch.tensor([0.5 * expected[0], 1.0 * expected[1]], dtype=torch.float64))


# -- the combiners ---------------------------------------------------------------------------


def _model() -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
    return MultiTaskModel(trunk, LinearHeads(5, T), rep_dim=5).double()


def _batch(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(B, T, generator=g) < 0.5).double()
    rep, out = model(x)
    return x, rep, out, F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(0)


def _jac(losses, params):
    return torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, params, retain_graph=True)]) for li in losses]
    )


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_two_batch_combiner_is_its_pure_function_over_steps_and_a_state_round_trip(name):
    model = _model()
    comb = COMBINERS[name](T)
    shared = model.shared_parameters()
    start = None
    for step in range(3):
        if step == 2:  # a fresh instance from the state: the same next step
            state = comb.state_dict()
            comb = COMBINERS[name](T)
            comb.load_state_dict(state)
        x, rep, out, losses = _batch(model, 2 * step)
        x2, rep2, out2, losses2 = _batch(model, 2 * step + 1)
        j1, j2 = _jac(losses, shared), _jac(losses2, shared)
        if name == "sdmgrad":
            expected = Fn.sdmgrad(j1, j2, start)
            _, start = Fn.sdmgrad_weights(j1 @ j2.T, start)
        else:
            expected = Fn.modo(j1, j2, start)
            start = Fn.modo_weights(j1 @ j2.T, start)
        heads = torch.cat(
            [
                g.reshape(-1)
                for g in torch.autograd.grad((losses + losses2).sum() / 2, model.head_parameters(), retain_graph=True)
            ]
        )
        model.zero_grad(set_to_none=True)
        comb.backward(Step(model, x, rep, out, losses, inputs2=x2, rep2=rep2, outputs2=out2, losses2=losses2))
        got = torch.cat([p.grad.reshape(-1) for p in shared])
        assert torch.allclose(got, expected, atol=1e-12), (name, step)
        assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in model.head_parameters()]), heads, atol=1e-12)


def test_moco_combiner_is_its_pure_function_and_resumes_from_its_state():
    model = _model()
    comb = COMBINERS["moco"](T)
    shared = model.shared_parameters()
    y = lam = None
    for k in range(1, 4):
        if k == 3:
            state = comb.state_dict()
            comb = COMBINERS["moco"](T)
            comb.load_state_dict(state)
        x, rep, out, losses = _batch(model, k)
        j = _jac(losses, shared)
        expected = Fn.moco(j, losses, y, lam, k)
        y, lam = Fn.moco_update(j, losses, y, lam, k)
        model.zero_grad(set_to_none=True)
        comb.backward(Step(model, x, rep, out, losses))
        got = torch.cat([p.grad.reshape(-1) for p in shared])
        assert torch.allclose(got, expected, atol=1e-12), k


def test_a_two_batch_combiner_without_a_second_batch_is_one_line():
    model = _model()
    x, rep, out, losses = _batch(model, 0)
    with pytest.raises(MtbenchError, match="second, independent mini-batch"):
        COMBINERS["sdmgrad"](T).backward(Step(model, x, rep, out, losses))


@pytest.mark.parametrize(
    "name, option, value, allowed",
    [
        ("sdmgrad", "level", "representation", "choose one of: params"),
        ("sdmgrad", "momentum", 1.0, ">= 0 and < 1"),
        ("sdmgrad", "lr", 0, "> 0"),
        ("sdmgrad", "lambda_", -1, ">= 0"),
        ("sdmgrad", "n_iter", 0, "an integer >= 1"),
        ("modo", "gamma", 0.0, "> 0"),
        ("modo", "rho", -0.1, ">= 0"),
        ("moco", "beta", 1.5, "> 0 and <= 1"),
        ("moco", "gamma_sigma", -1, ">= 0"),
        ("moco", "normalize", "yes", "true or false"),
        ("moco", "level", "representation", "choose one of: params"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(name, option, value, allowed):
    with pytest.raises(MtbenchError) as e:
        COMBINERS[name](T, **{option: value})
    text = str(e.value)
    assert "\n" not in text and f"combiner.{option}" in text
    assert allowed in text, text


def test_mtbench_backward_takes_the_second_batch():
    model = _model()
    x, rep, out, losses = _batch(model, 0)
    x2, rep2, out2, losses2 = _batch(model, 1)
    shared = model.shared_parameters()
    expected = Fn.modo(_jac(losses, shared), _jac(losses2, shared))
    model.zero_grad(set_to_none=True)
    mtbench.backward(losses, rep, COMBINERS["modo"](T), second_losses=losses2, second_features=rep2)
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in shared]), expected, atol=1e-12)
    model.zero_grad(set_to_none=True)  # without the second features: straight from the losses
    mtbench.backward(losses, rep, COMBINERS["modo"](T), second_losses=losses2)
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in shared]), expected, atol=1e-12)
    with pytest.raises(ValueError, match="second_losses="):
        mtbench.backward(losses, rep, COMBINERS["modo"](T))
    with pytest.raises(ValueError, match="two-batch combiner"):
        mtbench.backward(losses, rep, "mgda", second_losses=losses2)


# -- the trainer's second batch ----------------------------------------------------------------


def test_second_batch_is_reproducible_and_follows_its_generator_state():
    class Split:
        images = torch.arange(50).view(50, 1)
        labels = torch.arange(50)

        def __len__(self):
            return 50

    g = torch.Generator().manual_seed(7)
    first, _ = second_batch(Split(), 8, g)
    state = g.get_state()
    second, labels = second_batch(Split(), 8, g)
    g2 = torch.Generator().manual_seed(7)
    assert torch.equal(second_batch(Split(), 8, g2)[0], first)
    g2.set_state(state)  # a resumed run: the saved generator state gives the same next draw
    assert torch.equal(second_batch(Split(), 8, g2)[0], second)
    assert len(set(second.view(-1).tolist())) == 8 and torch.equal(second.view(-1), labels)


SHORT = [o for o in TINY if not o.startswith(("task.n_train", "trainer.epochs"))] + [
    "task.n_train=72",
    "trainer.epochs=2",
]


def _numbers(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    history = (run / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    keep = [i for i, c in enumerate(header) if "_s" not in c and "time" not in c and "load" not in c]
    rows = [[line.split(",")[i] for i in keep] for line in history]
    return {"test": m["test"], "val": m["val"], "history": rows}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sdmgrad", "modo", "moco"])
def test_cli_run_resumes_mid_epoch_to_the_same_numbers(tmp_path, name):
    """A tiny CLI run per method, and the same run stopped by SIGTERM after its first step and
    resumed in a new process: the same numbers (the second batches drawn after the resume are the
    uninterrupted run's)."""
    args = [*SHORT, f"combiner={name}", "~hydra.callbacks.tables"]
    (tmp_path / "ref").mkdir()
    ref = run_cli("mtbench", args, cwd=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    (tmp_path / "cut").mkdir()
    first = subprocess.run(
        [sys.executable, str(FIXTURES / "interrupt_at.py"), "1", "SIGTERM", *args],
        cwd=tmp_path / "cut",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    again = run_cli("mtbench", args, cwd=tmp_path / "cut")
    assert again.returncode == 0 and "resuming from" in again.stderr, again.stderr[-3000:]
    a = _numbers(run_dir(tmp_path / "ref" / "results" / "shapes40", name))
    b = _numbers(run_dir(tmp_path / "cut" / "results" / "shapes40", name))
    assert a == b


@pytest.mark.slow
def test_bench_step_times_the_two_batch_rows(tmp_path):
    """scripts/bench_step.py gives a two-batch row the next batch of its cycle as its second
    batch; its default rows hold only these methods' level (params)."""
    from test_bench import TINY_PROBLEM

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import bench_step

    rows = [r for r in bench_step.DEFAULT_ROWS if r.split("@")[0] in ("sdmgrad", "modo", "moco")]
    assert rows == ["sdmgrad@params", "modo@params", "moco@params"]
    out = tmp_path / "bench.json"
    args = [*TINY_PROBLEM, "--num-tasks", "3", "--image-size", "8", "--batch-size", "4", "--steps", "2"]
    args += ["--warmup", "1", "--slow-steps", "1", "--combiners", ",".join(rows), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    got = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    for row in rows:
        assert got[row]["error"] is None and got[row]["ms_per_step"] > 0, got[row]

"""CR-MOGM: torchjd's ``CRMOGMWeighting`` wrapping the same inner weights (mtbench's inner
method seen as a torchjd weighting, and torchjd's own IMTL-G) over several steps on the same
matrices, adversarial ones included; the wrapper composes any Gram-weighted combiner with its
own options, keeps both states across a checkpoint, refuses the others by name, and runs from
the command line."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torchjd.aggregation as jd
from conftest import TINY, one_error_line, run_cli, run_dir
from gram_matrices import ADVERSARIAL
from omegaconf import OmegaConf

from mtbench.combiners import COMBINERS, GramWeighted, build_combiner
from mtbench.combiners import functional as F
from mtbench.errors import MtbenchError

MATS = ADVERSARIAL


def steps(J: torch.Tensor, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [J] + [
        J + 0.3 * torch.randn(J.shape, generator=gen, dtype=torch.float64) * J.abs().mean() for _ in range(n - 1)
    ]


def step(T: int, seed: int = 0) -> SimpleNamespace:
    """The parts of a Step the inner methods read (MGDA's losses and dtype, GradVac's draws)."""
    return SimpleNamespace(
        losses=torch.ones(T, dtype=torch.float64),
        rep=torch.zeros(1, dtype=torch.float64),
        cpu_generator=torch.Generator().manual_seed(seed),
    )


class Ours(jd.Weighting):
    """mtbench's inner weights as a torchjd Gramian weighting (the inner method alone)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, gramian):
        return self.fn(gramian)


@pytest.mark.parametrize("matrix", list(MATS))
@pytest.mark.parametrize("inner", ["upgrad", "mgda", "imtl_g"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_the_combiner_equals_torchjds_cr_mogm_on_the_same_inner_weights(matrix, inner, alpha):
    T = MATS[matrix].shape[0]
    comb = COMBINERS["cr_mogm"](T, inner=inner, alpha=alpha)
    twin = COMBINERS[inner](T)  # the same inner method, fed the same matrices
    ref = jd.CRMOGMWeighting(Ours(lambda G: twin.gram_weights(G, step(T))), alpha=alpha)
    for J in steps(MATS[matrix]):
        G = J @ J.T
        ours = comb.gram_weights(G, step(T))
        theirs = ref(G)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("matrix", list(MATS))
def test_with_torchjds_imtl_g_inside_it_is_T_times_torchjds_throughout(matrix):
    """mtbench's imtl_g is T x torchjd's IMTLGWeighting; the EMA is linear, so cr_mogm(imtl_g) is
    T x torchjd's CRMOGMWeighting(IMTLGWeighting()) at every step."""
    T = MATS[matrix].shape[0]
    comb = COMBINERS["cr_mogm"](T, inner="imtl_g", alpha=0.7)
    ref = jd.CRMOGMWeighting(jd.IMTLGWeighting(), alpha=0.7)
    for J in steps(MATS[matrix]):
        G = J @ J.T
        torch.testing.assert_close(comb.gram_weights(G, None), T * ref(G), rtol=1e-9, atol=1e-12)


def test_the_pure_function_is_the_ema_and_its_first_step_the_inner_weights():
    J = MATS["random"]
    w = F.upgrad_weights_from_gram(J @ J.T)
    torch.testing.assert_close(F.cr_mogm(J, F.upgrad_weights_from_gram), F.upgrad(J))
    prev = torch.full((5,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(F.cr_mogm_weights(w, prev, 0.25), 0.25 * prev + 0.75 * w, rtol=0, atol=0)
    torch.testing.assert_close(F.cr_mogm(J, F.upgrad_weights_from_gram, prev, 1.0), prev @ J)


def test_state_holds_the_ema_and_the_inner_state_and_resumes_exactly():
    gen = torch.Generator().manual_seed(2)
    grams = [(lambda J: J @ J.T)(torch.randn(3, 7, generator=gen, dtype=torch.float64)) for _ in range(4)]

    for inner in ("gradvac", "pcd", "mgda"):
        a = COMBINERS["cr_mogm"](3, inner=inner, alpha=0.6)
        a.gram_weights(grams[0], step(3, 0))
        saved = a.state_dict()
        assert saved["ema"] is not None and saved["inner"].keys() == a.inner_combiner.state_dict().keys()
        ref = [a.gram_weights(grams[k], step(3, k)) for k in (1, 2, 3)]
        b = COMBINERS["cr_mogm"](3, inner=inner, alpha=0.6)
        b.load_state_dict(saved)
        got = [b.gram_weights(grams[k], step(3, k)) for k in (1, 2, 3)]
        for x, y in zip(got, ref):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=0)


def test_the_inner_method_takes_its_own_options_and_the_task_names():
    comb = build_combiner(
        OmegaConf.create({"name": "cr_mogm", "inner": "pcd", "inner_options": {"primary": "b", "tau": 0.3}}),
        3,
        task_names=["a", "b", "c"],
    )
    assert comb.inner_combiner.primary_index == 1 and comb.inner_combiner.tau == 0.3
    comb = COMBINERS["cr_mogm"](3, inner="upgrad", inner_options={"solver": "quadprog"}, level="params")
    assert comb.inner_combiner.solver == "quadprog" and comb.inner_combiner.level == "params"


def test_a_method_that_is_not_gram_weighted_is_refused_naming_those_that_are():
    gram = sorted(n for n, c in COMBINERS.items() if issubclass(c, GramWeighted) and n != "cr_mogm")
    with pytest.raises(MtbenchError) as err:
        COMBINERS["cr_mogm"](3, inner="graddrop")
    assert str(err.value) == (
        f"combiner.inner='graddrop' is not a Gram-weighted method; cr_mogm wraps one of: {', '.join(gram)}"
    )
    assert "upgrad" in gram and "pcgrad" in gram and "uw" not in gram and "graddrop" not in gram


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 1.5}, "combiner.alpha must be a finite number >= 0 and <= 1 (got 1.5)"),
        (
            {"inner_options": {"solver": "x"}},
            "combiner.inner_options.solver='x' is not allowed for combiner=upgrad; choose one of: active_set, quadprog",
        ),
        (
            {"inner_options": {"level": "params"}},
            "combiner.inner_options.level is cr_mogm's own option: set combiner.level instead",
        ),
        ({"inner_options": [1]}, "combiner.inner_options must be a mapping of upgrad's options (got [1])"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it(options, message):
    with pytest.raises(MtbenchError) as err:
        COMBINERS["cr_mogm"](3, **options)
    assert str(err.value) == message


@pytest.mark.slow
def test_runs_from_the_command_line_wrapping_a_method_and_refuses_another(tmp_path):
    args = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=1", "~hydra.callbacks.tables"]
    proc = run_cli("mtbench", ["combiner=cr_mogm", "combiner.inner=uw", *args], cwd=tmp_path)
    assert "is not a Gram-weighted method; cr_mogm wraps one of: " in one_error_line(proc)
    proc = run_cli(
        "mtbench",
        ["combiner=cr_mogm", "combiner.inner=mgda", "+combiner.inner_options.normalization=l2", *args],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((run_dir(tmp_path / "results" / "shapes40", "cr_mogm") / "metrics.json").read_text())
    assert m["status"] == "completed" and math.isfinite(m["test"]["error_rate"])
    assert m["config"]["combiner"]["inner"] == "mgda" and m["config"]["combiner"]["inner_options"] == {
        "normalization": "l2"
    }

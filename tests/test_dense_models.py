"""The dense-prediction models (SegNet split, SegNet-MTAN, ResNet-50 DeepLab, small SegNet), their
heads and parameter split, the combiners on them at both levels (checked against independent
autograd computations), and the level check for a model without a shared representation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from omegaconf import OmegaConf

from mtbench.combiners import build_combiner
from mtbench.combiners.base import Step, check_representation
from mtbench.data.base import HeadSpec
from mtbench.errors import MtbenchError
from mtbench.models import DENSE_MODELS, MODELS, build_model, check_model, shared_representation

NYU = {"segmentation": 5, "depth": 1, "normal": 3}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeDenseTask:
    """A dense task as the models see it: ``dense``, ``head_spec()`` with a dict of widths."""

    dense = True

    def __init__(self, outputs: dict[str, int] | None = None):
        self.outputs = dict(outputs or NYU)

    def head_spec(self) -> HeadSpec:
        return HeadSpec(outputs=dict(self.outputs))

    def make_heads(self, rep_dim: int):
        return None


def fake_batch(outputs: dict[str, int], b: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, h, w, generator=g)
    labels = {}
    if "segmentation" in outputs:
        seg = torch.randint(0, outputs["segmentation"], (b, h, w), generator=g)
        seg[:, 0, :] = -1  # ignored pixels
        labels["segmentation"] = seg
    if "depth" in outputs:
        depth = torch.rand(b, 1, h, w, generator=g) + 0.5
        depth[:, :, :, 0] = 0  # missing
        labels["depth"] = depth
    if "normal" in outputs:
        normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        normal[:, :, 1, :] = 0
        labels["normal"] = normal
    return x, labels


def dense_losses(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """The literature's losses: CE ignoring -1, L1 over valid depth, 1 - cos over valid normals."""
    losses = []
    for name, out in outputs.items():
        y = labels[name]
        if name == "segmentation":
            losses.append(F.cross_entropy(out, y, ignore_index=-1))
        elif name == "depth":
            valid = y != 0
            losses.append((out - y).abs()[valid].mean())
        else:
            valid = y.abs().sum(1) > 0
            cos = (F.normalize(out, dim=1) * y).sum(1)
            losses.append((1 - cos[valid]).mean())
    return torch.stack(losses)


def model_cfg(name: str, **options):
    cfg = OmegaConf.load(f"configs/model/{name}.yaml")
    for k, v in options.items():
        cfg[k] = v
    return cfg


def build(name: str, outputs=None, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model(model_cfg(name, **options), in_channels=3, task=FakeDenseTask(outputs))


def n_params(params) -> int:
    return sum(p.numel() for p in params)


# -- the models -----------------------------------------------------------------------------


def test_registered_and_configs_check():
    for name in DENSE_MODELS:
        assert name in MODELS
        cfg = model_cfg(name)
        assert cfg.name == name
        check_model(cfg)
    assert shared_representation(model_cfg("segnet_mtan")) is False
    assert shared_representation(model_cfg("segnet")) is True
    assert shared_representation(OmegaConf.create({"name": "x", "_target_": "a.b"})) is None


@pytest.mark.parametrize(
    "name, filters, message",
    [
        ("segnet", [], "at least 1 level"),
        ("segnet_mtan", [8], "at least 2 levels"),
        ("small_segnet", [8, 0], "model.filters[1]"),
        ("segnet", "wide", "must be a list"),
    ],
)
def test_bad_filters_one_line_error(name, filters, message):
    with pytest.raises(MtbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_model(model_cfg(name, filters=filters))


def test_small_segnet_outputs_and_parameter_split():
    model = build("small_segnet")
    x, _ = fake_batch(NYU, 2, 32, 48)
    rep, out = model(x)
    assert rep.shape == (2, 8, 32, 48)
    assert list(out) == ["segmentation", "depth", "normal"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "segmentation": (2, 5, 32, 48),
        "depth": (2, 1, 32, 48),
        "normal": (2, 3, 32, 48),
    }
    shared = {id(p) for p in model.shared_parameters()}
    heads = {id(p) for p in model.head_parameters()}
    assert shared and heads and not shared & heads
    assert shared | heads == {id(p) for p in model.parameters()}
    assert model.linear_heads() is None and getattr(model, "shared_representation", True) is True
    # each head reads the shared map only: changing one head leaves the others' outputs alone
    with torch.no_grad():
        model.heads.depth[1].bias.add_(1.0)
        _, out2 = model(x)
    assert torch.equal(out2["segmentation"], out["segmentation"])
    assert (out2["depth"] - out["depth"] - 1.0).abs().max() < 1e-5, (out2["depth"] - out["depth"] - 1.0).abs().max()


def test_odd_input_size_keeps_resolution():
    model = build("small_segnet", filters=[4, 8, 8])
    rep, out = model(torch.randn(2, 3, 30, 42))
    assert rep.shape[-2:] == (30, 42) and out["normal"].shape == (2, 3, 30, 42)


def test_dense_model_needs_dense_task_and_back():
    class Binary:
        dense = False

        def head_spec(self):
            return HeadSpec(outputs=4)

        def make_heads(self, d):
            return None

    with pytest.raises(MtbenchError, match="needs a dense task"):
        build_model(model_cfg("small_segnet"), task=Binary())
    with pytest.raises(MtbenchError, match="model=segnet or"):
        build_model(OmegaConf.load("configs/model/small_cnn.yaml"), task=FakeDenseTask())


def tiny_trunk(in_channels: int, width: int = 6):
    """A ``model._target_`` trunk for a dense task: a stride-2 feature map."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, stride=2, padding=1), torch.nn.ReLU()), width


def test_target_trunk_on_dense_task_gets_conv_heads():
    cfg = OmegaConf.create({"name": "mine", "_target_": "test_dense_models.tiny_trunk", "width": 5})
    check_model(cfg)
    model = build_model(cfg, in_channels=3, task=FakeDenseTask())
    rep, out = model(torch.randn(2, 3, 16, 20))
    assert rep.shape == (2, 5, 8, 10) and out["segmentation"].shape == (2, 5, 16, 20)
    assert model.shared_representation is True and n_params(model.head_parameters()) > 0


def test_model_task_mismatch_before_the_run():
    from mtbench.models.dense import check_model_for_task

    check_model_for_task(model_cfg("segnet"), None)  # the task does not say: passes
    check_model_for_task(model_cfg("segnet"), True)
    with pytest.raises(MtbenchError, match="needs a dense task"):
        check_model_for_task(model_cfg("segnet_mtan"), False)
    with pytest.raises(MtbenchError, match="per-pixel maps; choose model=segnet"):
        check_model_for_task(OmegaConf.load("configs/model/resnet18.yaml"), True)


def test_tiny_mtan_per_task_blocks():
    """MTAN's rep is the T attended maps side by side; head t reads block t only."""
    model = build("segnet_mtan", filters=[4, 8])
    assert model.shared_representation is False
    x, _ = fake_batch(NYU, 2, 16, 16)
    rep, out = model(x)
    assert rep.shape == (2, 3 * 4, 16, 16) and out["normal"].shape == (2, 3, 16, 16)
    (g,) = torch.autograd.grad(out["depth"].sum(), rep)
    assert g[:, 4:8].abs().sum() > 0 and g[:, :4].abs().sum() == 0 and g[:, 8:].abs().sum() == 0
    # the attention modules are shared parameters, the heads are not
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in model.trunk.enc_att.parameters())
    assert not shared & {id(p) for p in model.head_parameters()}


@pytest.mark.slow
def test_reference_parameter_counts():
    """The reference SegNet's counts: trunk + a 13-class segmentation head = 24,981,069 (the
    single-task SegNet CAGrad's MTAN script divides by); SegNet-MTAN 44,229,073 (44.2M, 1.77x)."""
    nyu = {"segmentation": 13, "depth": 1, "normal": 3}
    split = build("segnet", nyu)
    trunk = n_params(split.shared_parameters())
    assert trunk + n_params(split.heads.segmentation.parameters()) == 24_981_069
    assert n_params(split.parameters()) == 25_055_185
    mtan = build("segnet_mtan", nyu)
    assert n_params(mtan.parameters()) == 44_229_073
    assert n_params(mtan.head_parameters()) == n_params(split.head_parameters())
    deeplab = build("resnet50_deeplab", nyu)
    assert n_params(deeplab.shared_parameters()) == 23_508_032  # torchvision ResNet-50 without fc


@pytest.mark.slow
@pytest.mark.parametrize("name, batch", [("segnet", 1), ("segnet_mtan", 1), ("resnet50_deeplab", 2)])
def test_full_models_forward_backward(name, batch):
    model = build(name, NYU)
    x, labels = fake_batch(NYU, batch, 32, 32)
    rep, out = model(x)
    assert all(o.shape[-2:] == (32, 32) for o in out.values())
    expected = {"segnet": (64, 32), "segnet_mtan": (192, 32), "resnet50_deeplab": (2048, 4)}[name]
    assert (rep.shape[1], rep.shape[-1]) == expected
    dense_losses(out, labels).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_deeplab_loads_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(3)
    ref = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = build("resnet50_deeplab", NYU, weights=str(path))
    assert torch.equal(model.trunk.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    assert model.trunk.layer4[1].conv2.dilation == (4, 4) and model.trunk.layer3[0].conv2.stride == (1, 1)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(MtbenchError, match="not a resnet50 state_dict"):
        build("resnet50_deeplab", NYU, weights=str(bad))


# -- the combiners on dense models ----------------------------------------------------------


def combiner(name: str, num_tasks: int, **options):
    cfg = OmegaConf.load(f"configs/combiner/{name}.yaml")
    for k, v in options.items():
        cfg[k] = v
    return build_combiner(cfg, num_tasks)


def run_step(model, comb, x, labels, seed: int = 0):
    model.zero_grad(set_to_none=True)
    comb.prepare(model)
    rep, out = model(x)
    losses = dense_losses(out, labels)
    gen = torch.Generator().manual_seed(seed)
    comb.backward(Step(model, x, rep, out, losses, gen, torch.Generator().manual_seed(seed)))
    return losses


@pytest.mark.parametrize(
    "name, level",
    [
        ("baseline", None),
        ("graddrop", None),
        ("pcgrad", "representation"),
        ("mgda", "representation"),
        ("nash_mtl", "representation"),
        ("pcgrad", "params"),
        ("mgda", "params"),
    ],
)
def test_combiners_on_small_segnet(name, level):
    tasks = {"segmentation": 5, "normal": 3}  # two tasks: the solvers' first call compiles nothing
    model = build("small_segnet", tasks)
    x, labels = fake_batch(tasks, 2, 16, 24)
    comb = combiner(name, 2, **({"level": level} if level else {}))
    check_representation(comb, "small_segnet", model.shared_representation)  # has one: passes
    losses = run_step(model, comb, x, labels)
    grads = {id(p): p.grad for p in model.parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the heads get their own losses' plain gradients (every combiner here leaves them so)
    model.zero_grad(set_to_none=True)
    rep, out = model(x)
    total = dense_losses(out, labels).sum()
    plain = torch.autograd.grad(total, model.head_parameters(), retain_graph=True)
    for p, g in zip(model.head_parameters(), plain):
        assert torch.allclose(grads[id(p)], g, rtol=1e-5, atol=1e-6)
    if name == "baseline":
        full = torch.autograd.grad(total, model.shared_parameters())
        for p, g in zip(model.shared_parameters(), full):
            assert torch.allclose(grads[id(p)], g, rtol=1e-5, atol=1e-6)
    assert losses.shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mgda", "nash_mtl"])
def test_three_task_solvers_on_small_segnet(name):
    model = build("small_segnet")
    x, labels = fake_batch(NYU, 2, 16, 24)
    run_step(model, combiner(name, 3), x, labels)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "name, options",
    [("baseline", {}), ("famo", {}), ("gradnorm", {}), ("mgda", {"level": "params"})],
)
def test_params_and_loss_level_combiners_on_tiny_mtan(name, options):
    tasks = {"segmentation": 4, "depth": 1}
    model = build("segnet_mtan", tasks, filters=[4, 8])
    x, labels = fake_batch(tasks, 2, 16, 16)
    comb = combiner(name, 2, **options)
    check_representation(comb, "segnet_mtan", model.shared_representation)
    run_step(model, comb, x, labels)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def test_mgda_at_representation_equals_independent_autograd():
    """MGDA-UB on a [B, C, H, W] map through conv heads: per-task gradients at the map taken one
    by one, the two-task min-norm weights in closed form, pushed through the trunk by hand."""
    tasks = {"segmentation": 4, "depth": 1}
    model = build("small_segnet", tasks, seed=1)
    x, labels = fake_batch(tasks, 2, 16, 16, seed=1)
    run_step(model, combiner("mgda", 2, level="representation"), x, labels)
    got = [p.grad.clone() for p in model.shared_parameters()]

    model.zero_grad(set_to_none=True)
    rep, out = model(x)
    losses = dense_losses(out, labels)
    g1 = torch.autograd.grad(losses[0], rep, retain_graph=True)[0].double()
    g2 = torch.autograd.grad(losses[1], rep, retain_graph=True)[0].double()
    a = float(((g2 - g1) * g2).sum() / ((g1 - g2) ** 2).sum())
    a = min(max(a, 0.0), 1.0)  # argmin over the segment of ||a g1 + (1 - a) g2||
    direction = (2 * (a * g1 + (1 - a) * g2)).float()  # rescale: T times the convex combination
    expected = torch.autograd.grad(rep, model.shared_parameters(), direction)
    assert 0 < a < 1  # an interior solution: both tasks count
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


def test_pcgrad_at_params_on_mtan_equals_independent_autograd():
    """PCGrad at the parameters of SegNet-MTAN (attention modules shared): each task's gradient
    of every shared parameter by its own autograd call, the two-task projection in closed form."""
    tasks = {"segmentation": 4, "normal": 3}
    model = build("segnet_mtan", tasks, seed=2, filters=[4, 8])
    x, labels = fake_batch(tasks, 2, 16, 16, seed=2)
    run_step(model, combiner("pcgrad", 2, level="params"), x, labels)
    shared = model.shared_parameters()
    got = _flat([p.grad for p in shared])

    model.zero_grad(set_to_none=True)
    _, out = model(x)
    losses = dense_losses(out, labels)
    g1 = _flat(torch.autograd.grad(losses[0], shared, retain_graph=True, allow_unused=True)).double()
    g2 = _flat(torch.autograd.grad(losses[1], shared, retain_graph=True)).double()
    dot = float(g1 @ g2)
    p1 = g1 - min(dot, 0.0) / float(g2 @ g2) * g2
    p2 = g2 - min(dot, 0.0) / float(g1 @ g1) * g1
    expected = (p1 + p2).float()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    # each task's own attention modules get no gradient from the other task
    att0 = _flat(torch.autograd.grad(losses[1], list(model.trunk.enc_att[0].parameters()), retain_graph=True))
    assert att0.abs().max() == 0


# -- the level check --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, fix",
    [
        ("mgda", {}, "combiner.level=params"),
        ("nash_mtl", {"level": "representation"}, "combiner.level=params"),
        ("graddrop", {}, "model=segnet"),
        ("gradnorm", {"grad_at": "representation"}, "combiner.grad_at=last_shared"),
        ("gradpenalty", {"target": "representation"}, "combiner.target=input"),
    ],
)
def test_representation_combiners_refused_on_mtan(name, options, fix):
    comb = combiner(name, 3, **options)
    with pytest.raises(MtbenchError, match=fix) as e:
        check_representation(comb, "segnet_mtan", shared_representation(model_cfg("segnet_mtan")))
    assert "\n" not in str(e.value) and "segnet_mtan" in str(e.value)
    check_representation(comb, "segnet", shared_representation(model_cfg("segnet")))  # fine there


@pytest.mark.parametrize("name", ["baseline", "famo", "gradnorm", "gradpenalty"])
def test_params_and_loss_level_combiners_allowed_on_mtan(name):
    check_representation(combiner(name, 3), "segnet_mtan", False)
    check_representation(combiner("mgda", 3, level="params"), "segnet_mtan", False)
    check_representation(combiner("pcgrad", 3), "segnet_mtan", False)  # params by default


@pytest.mark.slow
def test_cli_refuses_representation_level_on_mtan(tmp_path):
    fake = run_cli("mtbench-fake", ["nyuv2", "--root", str(tmp_path / "nyu")], cwd=tmp_path)
    assert fake.returncode == 0, fake.stderr
    args = ["task=nyuv2", f"data.root={tmp_path / 'nyu'}", "model=segnet_mtan", "combiner=mgda"]
    proc = run_cli("mtbench", [*args, "trainer.device=cpu", "trainer.num_threads=1"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert len(lines) == 1 and "combiner.level=params" in lines[0], proc.stderr
    assert not list(tmp_path.glob("results/**/metrics.json")) and not list(tmp_path.glob("results/**/*.pt"))

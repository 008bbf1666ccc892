"""What a new user expects of the package around the benchmark: the error of ``mtbench.backward``
in Python terms, ``mtbench --version``, the release metadata, the ignored folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mtbench
from mtbench.combiners import COMBINERS

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _losses(trunk: nn.Module):
    torch.manual_seed(0)
    heads = nn.Linear(8, 3)
    rep = trunk(torch.randn(6, 4))
    return list(heads(rep).pow(2).mean(0)), rep


def test_gradnorm_without_trunk_names_the_trunk_argument():
    trunk = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    losses, rep = _losses(trunk)
    with pytest.raises(ValueError) as e:
        mtbench.backward(losses, rep, COMBINERS["gradnorm"](3))
    assert "pass trunk=<the module that produced features> to mtbench.backward" in str(e.value)
    assert "combiner.grad_at" not in str(e.value)  # a config key means nothing in Python


def test_gradnorm_with_trunk_runs_and_fills_the_trunk_gradients():
    trunk = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    losses, rep = _losses(trunk)
    mtbench.backward(losses, rep, COMBINERS["gradnorm"](3), trunk=trunk)
    assert trunk[0].weight.grad is not None and trunk[0].weight.grad.abs().sum() > 0


def test_version_is_the_package_version(monkeypatch, capsys):
    from mtbench import cli

    monkeypatch.setattr("sys.argv", ["mtbench", "--version"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert capsys.readouterr().out.splitlines()[0] == f"mtbench {meta['project']['version']}"


def test_release_metadata_is_complete():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all(url.startswith("https://") for url in project.get("urls", {}).values())
    assert project["description"] and project["readme"] == "README.md" and project["keywords"]
    assert any(c.startswith("License ::") for c in project["classifiers"])
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in project["classifiers"])
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {project['version']}" in changelog


def test_debug_and_results_folders_are_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/debug/" in ignored and "/results/" in ignored


def test_help_usage_lines_are_aligned():
    import yaml

    header = yaml.safe_load((ROOT / "configs/hydra/help/mtbench.yaml").read_text())["header"]
    block = header.split("Usage:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(block) >= 8
    assert all(line.startswith("  mtbench") for line in block), block  # one indent
    columns = {len(line) - len(line.split("   ")[-1].lstrip()) for line in block}
    assert len(columns) == 1, block  # the descriptions start in one column


def test_cli_reference_counts_the_console_scripts():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    words = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}
    text = (ROOT / "docs/reference/cli.md").read_text()
    assert f"{words[len(scripts)]} console scripts come with the package" in text
    for name in scripts:
        assert f"`{name}`" in text


def test_sweep_manifests_are_removed_with_those_of_dead_commands(tmp_path, monkeypatch):
    from mtbench.report import sweep

    monkeypatch.delenv(sweep.ENV, raising=False)
    path = sweep.start(tmp_path)
    sweep.record(tmp_path / "results/x/runs/baseline/default/seed=0", "refused", "bad")
    dead = path.parent / "999999999-0badc0de.jsonl"  # no such process: an interrupted command's
    dead.write_text("")
    code, lines = sweep.finish(path)
    assert code == 2 and len(lines) == 1
    assert not path.exists() and not dead.exists() and not path.parent.exists()


def test_a_live_commands_manifest_stays(tmp_path, monkeypatch):
    import os

    from mtbench.report import sweep

    monkeypatch.delenv(sweep.ENV, raising=False)
    path = sweep.start(tmp_path)
    live = path.parent / f"{os.getppid()}-12345678.jsonl"
    live.parent.mkdir(parents=True)
    live.write_text("")
    sweep.discard(path)
    assert live.exists()


@pytest.mark.parametrize("name", ["resnet_graddrop", "resnet_mgda"])
def test_examples_help_is_complete(name, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr("sys.argv", [name, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    options = " ".join(out.split("options:", 1)[1].split())
    blocks = {b.split()[0]: b for b in ("--" + x for x in options.split(" --")[1:])}
    for option in ("--steps", "--batch-size", "--image-size", "--device"):
        assert "(default: " in blocks[option], blocks[option]  # a help text and its default
    assert "heads" in out and "random data" in " ".join(out.split())  # the whole first paragraph


_WAIT_POLICY = """
import os, sys
import mtbench.cli
assert "torch" not in sys.modules, "torch loaded before main() sets OMP_WAIT_POLICY"
sys.argv = ["mtbench", "--version"]
try:
    mtbench.cli.main()
except SystemExit:
    pass
print(os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_sets_a_passive_openmp_wait_policy_before_torch_loads(given, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", _WAIT_POLICY], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == expected

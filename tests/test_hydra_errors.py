"""Mistakes on Hydra's side of the command line, in mtbench's voice: one line naming the fix,
exit status 2, nothing written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from mtbench import overrides
from mtbench.errors import MtbenchError


def test_unquoted_tilde_is_expanded_to_the_home_folder():
    out = overrides.check(["data.root=~/celeba", "task=celeba"], multirun=False)
    assert out[0] == f"data.root='{Path.home() / 'celeba'}'"
    assert overrides.expand_home("data.root=~") == f"data.root='{Path.home()}'"
    assert overrides.expand_home("~combiner.leak") == "~combiner.leak"  # Hydra's delete: untouched


def test_a_character_the_grammar_rejects_names_the_quoting():
    with pytest.raises(MtbenchError) as e:
        overrides.check(["trainer.epochs=1", "name=a(b"], multirun=False)
    assert str(e.value) == (
        "name=a(b: Hydra's override grammar rejects a character in this value; "
        "quote it for Hydra inside the shell's quotes: \"name='a(b'\""
    )
    # the advice works: Hydra parses the quoted form
    assert overrides.check(["name='a(b'"], multirun=False) == ["name='a(b'"]


@pytest.mark.parametrize(
    "given, message",
    [
        ("hydra/launcher=slrum", "hydra/launcher=slrum: no such launcher; did you mean slurm?"),
        ("hydra/sweeper=optun", "hydra/sweeper=optun: no such sweeper; did you mean optuna?"),
        (
            "hydra/launcher=ray",
            "hydra/launcher=ray needs the hydra-ray-launcher package: pip install hydra-ray-launcher",
        ),
    ],
)
def test_plugin_choice_did_you_mean_and_install_hint(given, message):
    with pytest.raises(MtbenchError) as e:
        overrides.check([given], multirun=True)
    assert str(e.value).startswith(message)


def test_optuna_without_the_extra_names_the_extra(monkeypatch):
    monkeypatch.setattr(overrides, "hydra_choices", lambda group, searchpath=None: ["basic", "interleaved"])
    with pytest.raises(MtbenchError) as e:
        overrides.check(["hydra/sweeper=optuna"], multirun=True)
    assert (
        str(e.value)
        == 'hydra/sweeper=optuna needs the [optuna] extra: pip install -e ".[optuna]" (or pip install hydra-optuna-sweeper)'
    )


def _fake_sbatch(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\nexit 1\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_launcher_key_typo_did_you_mean(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch)
    with pytest.raises(MtbenchError) as e:
        overrides.check(["hydra/launcher=slurm", "hydra.launcher.partiton=gpu"], multirun=True)
    assert str(e.value) == (
        "hydra.launcher.partiton is not an option of hydra/launcher=slurm; did you mean hydra.launcher.partition?"
    )
    assert overrides.check(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], multirun=True)


def test_slurm_off_a_cluster_is_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MtbenchError, match=r"^hydra/launcher=slurm submits each run with SLURM's sbatch, which is not"):
        overrides.check(["hydra/launcher=slurm"], multirun=True)


def _one_line_exit_2(result, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("mtbench: error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr


@pytest.mark.slow
def test_cli_grammar_and_plugin_errors_exit_2(tmp_path):
    for args, text in [
        (["name=a(b"], "quote it for Hydra"),
        (["-m", "hydra/launcher=slrum"], "did you mean slurm?"),
        (["-m", "seed=0,1", "--cfg", "job"], "mtbench -m ... --dry-run"),
    ]:
        result = run_cli("mtbench", args, tmp_path)
        _one_line_exit_2(result, text)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_dry_run_lists_every_job_and_runs_none(tmp_path):
    result = run_cli("mtbench", ["-m", "combiner=baseline,pcgrad", "seed=0,1", "--dry-run", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = result.stdout.strip().splitlines()
    assert len(jobs) == 4
    assert jobs[0].startswith("combiner=baseline seed=0 ") and jobs[1].startswith("combiner=pcgrad seed=0 ")
    assert all("trainer.num_threads=1" in j for j in jobs)
    assert "4 job(s); --dry-run: none was run" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_bad_value_in_a_sweep_is_refused_before_any_job_runs(tmp_path):
    result = run_cli("mtbench", ["-m", "combiner=graddrop", "combiner.leak=0,2", *TINY], tmp_path)
    _one_line_exit_2(
        result,
        "job combiner.leak=2: combiner.leak values must be numbers in [0, 1]",
        "1 of 2 job(s) refused; nothing ran",
    )
    assert not (tmp_path / "results" / "shapes40").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad", ["combiner=graddrop combiner.leak=2", "trainer.epochs=0", "trainer.lr=-1", "trainer.optimizer=rmsprop"]
)
def test_a_refused_run_writes_nothing(tmp_path, bad):
    result = run_cli("mtbench", [*TINY, *bad.split()], tmp_path)
    _one_line_exit_2(result)
    assert not (tmp_path / "results").exists(), sorted(p for p in (tmp_path / "results").rglob("*"))


def _composed(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("mtbench.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_gpu_preset_without_a_gpu_is_refused_unless_the_device_is_explicit(monkeypatch):
    import torch

    from mtbench.cli import GPU_PRESETS, check_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for preset in GPU_PRESETS:
        args = [f"experiment={preset}", "data.root=/nonexistent"]
        if "cifar" in preset:
            args.append("model.weights=IMAGENET1K_V1")
        cfg = _composed(*args)
        assert check_job(cfg, args) == (
            f"experiment={preset} is sized for a GPU and no CUDA GPU is visible; add trainer.device=cpu to run it "
            "on the CPU anyway (many times slower: hours per run), or run it on a machine with a GPU"
        )
        assert check_job(_composed(*args, "trainer.device=cpu"), [*args, "trainer.device=cpu"]) is None
    assert check_job(_composed("experiment=shapes40_compare"), ["experiment=shapes40_compare"]) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = ["experiment=paper_celeba", "data.root=/nonexistent"]
    assert check_job(_composed(*args), args) is None


def test_cfg_flag_spellings():
    from mtbench.cli import _is_cfg_flag

    assert all(_is_cfg_flag(a) for a in ("--cfg", "-c", "--cfg=job", "-cjob"))
    assert not any(_is_cfg_flag(a) for a in ("-cd", "--config-dir", "--config-name", "combiner=clip"))

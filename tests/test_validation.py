"""Every bad option value is refused up front: exit 2, one line naming the option, no run.

The bad values go through the real ``mtbench`` entry point (``mtbench.cli.main``, Hydra and
all), each in its own forked process of one interpreter that imported torch once (as many at
once as there are cores; conftest's ``cli_case`` and ``cli_runs``): the same exit code and
stderr as the console script, a fraction of the start-up time.
"""

from __future__ import annotations

import pytest
from conftest import TINY, cli_case
from hydra import compose, initialize_config_module

from mtbench.cli import validate
from mtbench.combiners import COMBINERS
from mtbench.errors import MtbenchError

#: TINY without the shapes40 and small_cnn sizes, for the other tasks
OTHER = [o for o in TINY if not o.startswith(("task.", "model."))]
CIFAR = ["task=cifar100_transfer", "model.weights=IMAGENET1K_V1", "data.root=/nonexistent"]
CELEBA = ["task=celeba", "data.root=/nonexistent"]

#: (extra overrides, the bad override): the bad one's key must be named in the error line
BAD = [
    ([], "trainer.epochs=0"),
    ([], "trainer.batch_size=-4"),
    ([], "trainer.lr=-0.1"),
    ([], "trainer.lr=0"),
    ([], "trainer.max_steps_per_epoch=0"),
    ([], "trainer.overfit_batches=-1"),
    ([], "trainer.profile_steps=x"),
    ([], "trainer.weight_decay=-1"),
    ([], "trainer.weight_decay=abc"),
    ([], "trainer.weight_decay=nan"),
    (["trainer.optimizer=sgd"], "trainer.momentum=-0.5"),
    ([], "trainer.momentum=1.5"),
    (["trainer.scheduler=step"], "trainer.step_size=0"),
    (["trainer.scheduler=step"], "trainer.step_size=-1"),
    ([], "trainer.gamma=nan"),
    ([], "trainer.gamma=-1"),
    ([], "trainer.num_threads=-1"),
    ([], "trainer.num_threads=0"),
    ([], "trainer.device=mps"),
    ([], "trainer.device=cuda:x"),
    ([], "trainer.lr=inf"),
    ([], "trainer.lr=nan"),
    ([], "trainer.epochs=1.5"),
    ([], "trainer.eval_batch_size=abc"),
    ([], "trainer.amp=fp16"),
    ([], "trainer.channels_last=maybe"),
    ([], "trainer.progress=2"),
    ([], "trainer.select_metric=top1_error"),
    ([], "seed=true"),
    ([], "seed=-1"),
    ([], "seed=1.5"),
    ([], "force=abc"),
    ([], "model.width=abc"),
    ([], "model.rep_dim=0"),
    (["combiner=gradpenalty"], "combiner.lambda=inf"),
    (["combiner=gradnorm"], "combiner.alpha=abc"),
    (["combiner=gradnorm"], "combiner.alpha=nan"),
    (["combiner=gradnorm"], "combiner.weight_lr=inf"),
    (["combiner=gradnorm_graddrop"], "combiner.gradnorm.alpha=nan"),
    (["combiner=graddrop", "combiner.f=linear"], "combiner.k=nan"),
    (["combiner=graddrop", "combiner.f=sigmoid"], "combiner.k=inf"),
    (["combiner=graddrop"], "combiner.leak=nan"),
    (["combiner=graddrop"], "combiner.batch_separated=maybe"),
    (["combiner=graddrop"], "combiner.eps=0"),
    (["combiner=mgda", "combiner.level=params"], "combiner.chunk_size=0.5"),
    (["combiner=mgda"], "combiner.rescale=abc"),
    (["combiner=pcgrad"], "combiner.memory_budget_mb=-1"),
    (["combiner=clip"], "combiner.max_norm=nan"),
    ([], "task.n_train=0"),
    ([], "task.n_train=abc"),
    ([], "task.n_val=-5"),
    ([], "task.data_seed=-1"),
    ([], "task.image_size=8"),
    (CIFAR, "task.val_size=abc"),
    (CIFAR, "task.temperature=inf"),
    (CIFAR, "task.teacher_batch_size=0"),
    (CIFAR, "task.coarse=abc"),
    (CIFAR, "task.leak.target=2"),
    (CIFAR, "data.image_size=16"),
    (CELEBA, "data.image_size=4"),
    (CELEBA, "data.workers=0"),
    (CELEBA, "task.hflip=abc"),
]


def args_for(extra: list[str]) -> list[str]:
    return [*(OTHER if any(o.startswith("task=") for o in extra) else TINY), *extra]


for _index, (_extra, _bad) in enumerate(BAD):
    cli_case(__name__, _index, "mtbench", [*args_for(_extra), _bad])


@pytest.mark.parametrize("index", range(len(BAD)), ids=[bad for _, bad in BAD])
def test_bad_value_is_refused_before_the_run(cli_runs, index):
    ran = cli_runs[__name__, index]
    folder, code, output = ran.cwd, ran.returncode, ran.stdout + "\n" + ran.stderr
    key, value = BAD[index][1].split("=", 1)
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if x.startswith("mtbench: error:")]
    assert key in line and value.lower() in line.lower(), line
    left = list(folder.rglob("*"))  # a refused run writes nothing: no .hydra/, no mtbench.log
    assert left == [], f"files left behind: {left}"


@pytest.fixture(scope="module")
def compose_cfg():
    with initialize_config_module("mtbench.configs", version_base="1.3"):
        yield lambda overrides: compose("config", overrides=overrides)


@pytest.mark.parametrize("task", [[], CIFAR, CELEBA], ids=["shapes40", "cifar100_transfer", "celeba"])
@pytest.mark.parametrize("combiner", list(COMBINERS))
def test_shipped_configs_pass_the_checks(compose_cfg, task, combiner):
    """The checks refuse bad values only: every shipped combiner on every task passes."""
    validate(compose_cfg([*args_for(task), f"combiner={combiner}"]))


@pytest.mark.parametrize(
    "override",
    [
        "trainer.optimizer=sgd",
        "trainer.scheduler=step",
        "trainer.num_threads=null",
        "trainer.amp=bf16",
        "trainer.select_metric=max_f1",
        "trainer.momentum=0",
        "trainer.gamma=1",
        "combiner=mgda",
        "seed=12",
    ],
)
def test_good_values_pass_the_checks(compose_cfg, override):
    validate(compose_cfg([*TINY, override]))


def test_the_checks_name_option_value_and_what_is_allowed(compose_cfg):
    with pytest.raises(MtbenchError) as e:
        validate(compose_cfg([*TINY, "trainer.weight_decay=abc"]))
    assert str(e.value) == "trainer.weight_decay must be a finite number >= 0 (got 'abc')"
    with pytest.raises(MtbenchError) as e:
        validate(compose_cfg([*TINY, "seed=true"]))
    assert str(e.value) == "seed must be an integer >= 0 (got True)"

"""Parameter counts of the dense-prediction models (docs/tasks/dense-models.md): total, shared
(``shared_parameters()``, what the parameter-level combiners see) and heads, for NYUv2's heads
(13-class segmentation, depth, normals) and Cityscapes' (7-class segmentation, depth).

    python scripts/model_params.py
"""

from __future__ import annotations

from omegaconf import OmegaConf

from mtbench.data.base import HeadSpec
from mtbench.models import DENSE_MODELS, build_model

TASKS = {
    "nyuv2": {"segmentation": 13, "depth": 1, "normal": 3},
    "cityscapes": {"segmentation": 7, "depth": 1},
}


class _Heads:
    dense = True

    def __init__(self, outputs: dict[str, int]):
        self.outputs = outputs

    def head_spec(self) -> HeadSpec:
        return HeadSpec(outputs=dict(self.outputs))

    def make_heads(self, rep_dim: int):
        return None


def _count(params) -> int:
    return sum(p.numel() for p in params)


def main() -> None:
    print("| model | task | total | shared | heads |")
    print("|---|---|---:|---:|---:|")
    for name in DENSE_MODELS:
        cfg = OmegaConf.load(f"configs/model/{name}.yaml")
        for task, outputs in TASKS.items():
            model = build_model(cfg, task=_Heads(outputs))
            total, shared = _count(model.parameters()), _count(model.shared_parameters())
            print(f"| `{name}` | {task} | {total:,} | {shared:,} | {_count(model.head_parameters()):,} |")


if __name__ == "__main__":
    main()

"""Shared by the Gram-weighted methods' tests: random and adversarial [T, D] matrices, the
comparison at float32 rounding, each method's pure function."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from mtbench.combiners import build_combiner
from mtbench.combiners import functional as F


def adversarial() -> dict[str, torch.Tensor]:
    """[T, D] float64 stacks: random, and the adversarial cases (identical, opposing and
    anti-parallel rows, rank one, a zero row, a row 1e4 times larger or 1e6 times smaller, more
    tasks than dimensions, one task). "random" is 5 x 20."""
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    g = torch.randn(12, generator=gen, dtype=torch.float64)
    h = torch.randn(12, generator=gen, dtype=torch.float64)
    large = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    large[2] *= 1e4
    zero = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    zero[1] = 0.0
    t_gt_d = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    small = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    small[1] *= 1e-6
    zero_first = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    zero_first[0] = 0.0
    return {
        "random": rand,
        "agreeing": torch.stack([g, g, g]),
        "opposing": torch.stack([g, -g, h]),
        "anti_parallel_last_two": torch.stack([h, g, -g]),
        "rank_one": torch.outer(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), g),
        "rank_one_aligned": torch.outer(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), g),
        "zero_task": zero,
        "zero_first_task": zero_first,
        "one_1e4_larger": large,
        "one_1e6_smaller": small,
        "T_gt_D": t_gt_d,
        "T1": torch.randn(1, 9, generator=gen, dtype=torch.float64),
    }


#: every case of ``adversarial``
ADVERSARIAL = adversarial()
#: the cases of the Gram-weighted methods' shared tests
MATS = {name: ADVERSARIAL[name] for name in ("random", "agreeing", "opposing", "zero_task", "one_1e4_larger", "T_gt_D")}


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-6, floor: float = 1e-300) -> None:
    """Equal at float32 rounding or better, relative to the larger of the two results' norms
    (and of ``floor``, e.g. the plain sum's norm, for results that are nearly zero)."""
    scale = max(float(ref.norm()), float(ours.norm()), floor)
    err = float((ours - ref).norm())
    assert err <= rtol * scale, (
        f"|ours - ref| = {err:.3g}, |ref| = {float(ref.norm()):.3g}, |ours| = {float(ours.norm()):.3g}"
    )


ALL = {
    "upgrad": F.upgrad,
    "cagrad": F.cagrad,
    "nash_mtl": F.nash_mtl,
    "imtl_g": F.imtl_g,
    "aligned_mtl": F.aligned_mtl,
    "dualproj": F.dualproj,
    "fairgrad": F.fairgrad,
    "config": F.config,
    "gradvac": lambda J: F.gradvac(J, generator=torch.Generator().manual_seed(0)),
}


def build(name: str, **options):
    return build_combiner(OmegaConf.create({"name": name, **options}), num_tasks=3)

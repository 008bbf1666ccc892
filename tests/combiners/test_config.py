"""ConFIG (mtbench/combiners/config.py): equal cosines to every task."""

from __future__ import annotations

from gram_matrices import MATS

from mtbench.combiners import functional as F


def test_config_has_equal_cosines_to_every_task():
    J = MATS["random"]
    out = F.config(J)
    cos = (J @ out) / (J.norm(dim=1) * out.norm())
    assert float(cos.max() - cos.min()) < 1e-9 and float(cos.min()) > 0

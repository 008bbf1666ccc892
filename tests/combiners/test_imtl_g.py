"""IMTL-G (mtbench/combiners/imtl_g.py): equal projections on the unit gradients."""

from __future__ import annotations

from gram_matrices import MATS

from mtbench.combiners import functional as F


def test_imtl_g_has_equal_projections_on_the_unit_gradients():
    J = MATS["random"]
    out = F.imtl_g(J)
    proj = (J @ out) / J.norm(dim=1)
    assert float(proj.max() - proj.min()) < 1e-9 * float(proj.abs().max())

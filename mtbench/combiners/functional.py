"""The pure tensor functions behind the gradient combiners, one namespace (no modules, no state).

Each method's function lives beside its combiner (``mtbench/combiners/<method>.py``), its solver
in ``mtbench/combiners/solvers/``; this module re-exports them all. Every function takes per-task
gradients stacked along a leading task dimension ``T`` and returns one combined gradient (the
``*_weights_from_gram`` functions: one float64 weight per task from the Gram matrix), on
mtbench's scale: T equal gradients g give T g. The two-batch methods (:func:`sdmgrad`,
:func:`modo`) take ``grads`` and ``grads2``, the per-task gradients of two independent
mini-batches.

Randomness only comes from the ``generator`` argument (``None``: torch's global generator).

Autograd, the same for every method: the weights (GradDrop's masks and its rescaling factor,
every solver's weights) are computed from detached inputs and carry no graph; the result is
their combination of ``grads``, differentiable in ``grads`` as a fixed linear combination.
``mgda_weights`` returns the weights alone (no graph).

No task (``T = 0``): every method returns zeros of shape ``grads.shape[1:]`` (``mgda_weights``
an empty weight vector).
"""

from __future__ import annotations

from mtbench.combiners.aligned_mtl import (  # noqa: F401
    ALIGNED_MTL_SCALES,
    aligned_mtl,
    aligned_mtl_weights_from_gram,
)
from mtbench.combiners.cagrad import (  # noqa: F401
    CAGRAD_SOLVERS,
    cagrad,
    cagrad_solve,
    cagrad_state,
    cagrad_weights_from_gram,
)
from mtbench.combiners.config import (  # noqa: F401
    config,
    config_weights_from_gram,
)
from mtbench.combiners.cr_mogm import (  # noqa: F401
    cr_mogm,
    cr_mogm_weights,
)
from mtbench.combiners.db_mtl import (  # noqa: F401
    db_mtl,
    db_mtl_state,
)
from mtbench.combiners.dualproj import (  # noqa: F401
    dualproj,
    dualproj_weights_from_gram,
)
from mtbench.combiners.excess_mtl import (  # noqa: F401
    excess_mtl,
    excess_mtl_state,
)
from mtbench.combiners.fairgrad import (  # noqa: F401
    FAIRGRAD_SOLVERS,
    fairgrad,
    fairgrad_state,
    fairgrad_weights_from_gram,
)
from mtbench.combiners.graddrop import (  # noqa: F401
    GRADDROP_F,
    LeakLike,
    _graddrop_core,
    _keep_weights,
    _leak_per_task,
    _rescaled,
    graddrop,
    graddrop_factored,
    graddrop_transfer,
    random_graddrop,
)
from mtbench.combiners.gradvac import (  # noqa: F401
    gradvac,
    gradvac_weights_from_gram,
)
from mtbench.combiners.imtl import (  # noqa: F401
    imtl,
    imtl_weights_from_gram,
)
from mtbench.combiners.imtl_g import (  # noqa: F401
    imtl_g,
    imtl_g_weights_from_gram,
)
from mtbench.combiners.mgda import (  # noqa: F401
    mgda_weights,
    mgda_weights_from_gram,
)
from mtbench.combiners.moco import (  # noqa: F401
    moco,
    moco_update,
)
from mtbench.combiners.modo import (  # noqa: F401
    modo,
    modo_weights,
)
from mtbench.combiners.nash_mtl import (  # noqa: F401
    nash_mtl,
    nash_mtl_weights_from_gram,
)
from mtbench.combiners.pcd import (  # noqa: F401
    pcd,
    pcd_weights_from_gram,
)
from mtbench.combiners.pcgrad import (  # noqa: F401
    _pcgrad_coefficients,
    _visit_orders,
    pcgrad,
    pcgrad_weights_from_gram,
)
from mtbench.combiners.rows import (  # noqa: F401
    _check_grads,
    _check_option,
    _combine_rows,
    _frobenius,
    _norms_and_inverses,
    _projection_scale,
    gram_square_root,
)
from mtbench.combiners.sdmgrad import (  # noqa: F401
    sdmgrad,
    sdmgrad_weights,
)
from mtbench.combiners.solvers.cagrad_dual import (  # noqa: F401
    _BLOCK_PIVOTS,
    _CAGRAD_FRONT,
    _CAGRAD_MAX_ITER,
    _cagrad_dual,
    _next_active_set,
)
from mtbench.combiners.solvers.dual_cone import (  # noqa: F401
    _CG_MAX_ITER,
    _CG_MIN_WIDTH_CUBED,
    _PIVOT_MAX_SWEEPS,
    DUAL_CONE_REG,
    DUAL_CONE_SOLVERS,
    _dual_cone,
    _dual_cone_pivoting,
    _free_set_cg,
    _free_set_solve,
    _quadprog_projector,
    dual_cone_state,
)
from mtbench.combiners.solvers.min_norm import (  # noqa: F401
    _DEFAULT_MGDA_MAX_ITER,
    _DEFAULT_MGDA_TOL,
    _GAP_FLOOR,
    _finish_weights,
    _min_norm_weights,
    _two_task_gamma,
    _warm_support,
    _wolfe,
)
from mtbench.combiners.solvers.newton import (  # noqa: F401
    NASH_RIDGE,
    _fair_newton,
    _live_newton,
)
from mtbench.combiners.twobatch import (  # noqa: F401
    project_onto_simplex,
    two_batch_matrix,
)
from mtbench.combiners.upgrad import (  # noqa: F401
    upgrad,
    upgrad_weights_from_gram,
)

__all__ = [
    "graddrop",
    "random_graddrop",
    "graddrop_factored",
    "graddrop_transfer",
    "pcgrad",
    "pcgrad_weights_from_gram",
    "mgda_weights",
    "mgda_weights_from_gram",
    "upgrad",
    "upgrad_weights_from_gram",
    "dual_cone_state",
    "cagrad",
    "cagrad_weights_from_gram",
    "nash_mtl",
    "nash_mtl_weights_from_gram",
    "imtl_g",
    "imtl_g_weights_from_gram",
    "aligned_mtl",
    "aligned_mtl_weights_from_gram",
    "dualproj",
    "dualproj_weights_from_gram",
    "fairgrad",
    "fairgrad_weights_from_gram",
    "fairgrad_state",
    "config",
    "config_weights_from_gram",
    "gradvac",
    "gradvac_weights_from_gram",
    "gram_square_root",
    "pcd",
    "pcd_weights_from_gram",
    "cr_mogm",
    "cr_mogm_weights",
    "excess_mtl",
    "excess_mtl_state",
    "db_mtl",
    "db_mtl_state",
    "imtl",
    "imtl_weights_from_gram",
    "sdmgrad",
    "sdmgrad_weights",
    "modo",
    "modo_weights",
    "two_batch_matrix",
    "moco",
    "moco_update",
]

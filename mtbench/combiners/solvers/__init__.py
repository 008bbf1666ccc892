"""The solvers behind the Gram-matrix methods, one module each: the dual-cone QP (UPGrad,
DualProj, CAGrad's front), the min-norm point (MGDA, CAGrad), CAGrad's dual, the Newton solve
(Nash-MTL, FairGrad) and the certified solve (IMTL-G, ConFIG). Each has its compiled kernel
beside it (``<solver>_compiled.py``, numba, imported only where it runs)."""

#: below this many tasks the dual-cone, Newton and certified solves run as compiled loops
#: (``*_compiled.py``); from it on, batched in NumPy and torch (the compiled loops' scalar
#: factorisations can cost more than LAPACK's there); the other solvers run compiled at every size
COMPILED_BELOW = 64
#: the dual-cone pivoting's rule, one definition for both forms (:mod:`.dual_cone`, batched, and
#: :mod:`.dual_cone_compiled`): an entry violates its sign beyond
#: this times max_i A_ii max|U| ...
_PIVOT_REL_TOL = 1e-13
#: ... and the sweeps that may move every violating entry at once without reducing their number
#: before only the last one moves (Kim & Park's safeguard)
_PIVOT_RETRIES = 3

"""The solvers behind the Gram-matrix methods, one module each: the dual-cone QP (UPGrad,
DualProj, CAGrad's front), the min-norm point (MGDA, CAGrad), CAGrad's dual, the Newton solve
(Nash-MTL, FairGrad) and the certified solve (IMTL-G, ConFIG). Each has its compiled kernel
beside it (``<solver>_compiled.py``, numba, imported only where it runs) for few tasks."""

#: below this many tasks the small solves run as compiled loops (``*_compiled.py``); from it on,
#: batched in NumPy and torch (the compiled loops' scalar factorisations would cost more than LAPACK's)
COMPILED_BELOW = 64

"""The solvers behind the Gram-matrix methods, one module each: the dual-cone QP (UPGrad,
DualProj, CAGrad's front), the min-norm point (MGDA, CAGrad) and the Newton solve (Nash-MTL,
FairGrad); their compiled loops are in :mod:`mtbench.combiners.loops`, the certified solve
(IMTL-G, ConFIG) in :mod:`mtbench.combiners.linalg`."""

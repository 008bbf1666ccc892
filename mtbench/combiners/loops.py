"""The solvers' sequential loops, compiled by numba (``njit``, cached on disk after the first call).

PCGrad and GradVac visit, for every task, the other tasks one after another: each visit reads
the current gradient's products with the originals and may update them, so the visits cannot be
vectorised. In coefficient space (:func:`mtbench.combiners.functional.pcgrad` explains it) a
visit is a few scalar operations and at most one row update of length T; as a NumPy loop over
the T - 1 visits (vectorised over the tasks) it paid NumPy's per-call overhead about ten times
per visit, and at many tasks the gathers of the conflicting rows. Compiled, each task runs
through its own visits with its row in cache (the tasks are independent: the order in which
they are processed does not matter), with the same floating-point operations in the same
order as the vectorised form, so the results are bit for bit those of the NumPy loop.

Each kernel works in place on float64 NumPy arrays: ``coeff`` [T, T] (row i: task i's current
gradient in the basis of the original gradients, starting at the identity) and ``cg`` [T, T]
(row i: its products with every original gradient, ``coeff @ G``, starting at G).

The dual-cone pivoting of UPGrad and DualProj on few tasks (:func:`dual_cone_pivots`) solves
each QP's small systems one after another: at T = 40 a sweep of all the QPs is 40
factorisations of at most 40 x 40 matrices, less work than the calls that batch them cost. So
is Nash-MTL's and FairGrad's Newton iteration on few tasks (:func:`fair_newton`): each step a
40 x 40 factorisation and a few products, where NumPy's calls cost more than their arithmetic.

Wolfe's min-norm algorithm on few tasks (:func:`wolfe_min_norm`, MGDA's and CAGrad's solver) is
a few dozen affine solves of at most T + 1 unknowns a step, each a dozen NumPy calls. It makes
the NumPy loop's calls in the same order (its solves, products and dot products through the same
LAPACK and BLAS routines, its sums in NumPy's pairwise order: :func:`_numpy_sum`), so its results
are bit for bit the NumPy loop's. CAGrad's candidates (:func:`cagrad_candidate`: a piece's
system, its quadratic, the certificate) and the certified Cholesky solve of IMTL-G and ConFIG
(:func:`certified_solve`) are single calls for the same reason: inside a training step, right
after the network's backward pass, each small NumPy or torch call costs several times what it
costs in a tight loop, so at T = 40 the number of calls, not their arithmetic, sets the cost.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "pcgrad_visits",
    "gradvac_visits",
    "dual_cone_pivots",
    "fair_newton",
    "wolfe_min_norm",
    "certified_solve",
    "cagrad_candidate",
    "dual_cone_weights",
]


def _compiled(fn):
    """``njit`` with its machine code cached on disk (next to this file, else in the user's
    cache directory); where neither is writable, compiled once per process instead."""
    try:
        return njit(cache=True, error_model="numpy")(fn)
    except RuntimeError:  # numba found no writable cache location
        return njit(error_model="numpy")(fn)


@_compiled
def pcgrad_visits(g: np.ndarray, order: np.ndarray, coeff: np.ndarray, cg: np.ndarray) -> bool:
    """PCGrad's projections: task i visits ``order[i, s]`` for s = 0 .. T-2 and, when its current
    gradient conflicts with that task's original one (negative product, a non-zero gradient),
    removes the component along it. Returns whether any projection happened."""
    n = g.shape[0]
    projected = False
    for i in range(n):
        for s in range(n - 1):
            o = order[i, s]
            sq = g[o, o]
            d = cg[i, o]
            if d < 0.0 and sq > 0.0:
                projected = True
                step = d / sq
                coeff[i, o] -= step
                minus = -step
                for k in range(n):  # g_i' -= (g_i' . g_o / ||g_o||^2) g_o
                    cg[i, k] += minus * g[o, k]
    return projected


@_compiled
def gradvac_visits(
    g: np.ndarray, order: np.ndarray, phi: np.ndarray, beta: float, eps: float, coeff: np.ndarray, cg: np.ndarray
) -> None:
    """GradVac's updates (Wang et al. 2021, Algorithm 1): task i visits ``order[i, s]`` = j; when
    the cosine of its current gradient with g_j is below the EMA target phi[i, j], it adds the
    multiple of g_j that brings the cosine to the target; then phi[i, j] moves towards the
    cosine (``beta``). ``phi`` [T, T] is updated in place."""
    n = g.shape[0]
    for i in range(n):
        sq_i = g[i, i]  # ||g_i'||^2, kept up to date
        for s in range(n - 1):
            o = order[i, s]
            dot = cg[i, o]
            norm_i = np.sqrt(max(sq_i, 0.0))
            norm_j = np.sqrt(max(g[o, o], 0.0))
            cos = dot / (norm_i * norm_j + eps)
            target = phi[i, o]
            if cos < target:
                s_cos = np.sqrt(max(1.0 - cos * cos, 0.0))
                s_tgt = np.sqrt(max(1.0 - target * target, 0.0))
                w = norm_i * (target * s_cos - cos * s_tgt) / (norm_j * s_tgt + eps)
                # ||g_i' + w g_j||^2 = ||g_i'||^2 + 2 w (g_i' . g_j) + w^2 ||g_j||^2
                sq_i += 2.0 * w * dot + w * w * g[o, o]
                coeff[i, o] += w
                for k in range(n):
                    cg[i, k] += w * g[o, k]
            phi[i, o] = (1.0 - beta) * target + beta * cos


@_compiled
def _cholesky(m: np.ndarray, chol: np.ndarray) -> bool:
    """The Cholesky factor of the symmetric [n, n] ``m`` (its lower triangle is read) into
    ``chol[:n, :n]``'s lower triangle; False if m is not numerically positive definite."""
    n = m.shape[0]
    for i in range(n):
        for j in range(i + 1):
            s = m[i, j]
            for k in range(j):
                s -= chol[i, k] * chol[j, k]
            if i == j:
                if not s > 0.0:
                    return False
                chol[i, i] = np.sqrt(s)
            else:
                chol[i, j] = s / chol[j, j]
    return True


@_compiled
def _cholesky_solve(m: np.ndarray, b: np.ndarray, chol: np.ndarray, out: np.ndarray) -> bool:
    """out[:n] = m^-1 b by the Cholesky factorisation of the symmetric [n, n] ``m`` (its lower
    triangle is read; the factor goes into ``chol[:n, :n]``); False if m is not numerically
    positive definite."""
    n = m.shape[0]
    if not _cholesky(m, chol):
        return False
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= chol[i, k] * out[k]
        out[i] = s / chol[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s -= chol[k, i] * out[k]
        out[i] = s / chol[i, i]
    return True


@_compiled
def dual_cone_pivots(
    a: np.ndarray,
    u: np.ndarray,
    start: np.ndarray,
    tol: float,
    max_sweeps: int,
    v: np.ndarray,
    free: np.ndarray,
    settled: np.ndarray,
) -> bool:
    """Block principal pivoting (Judice & Pires 1994, Kim & Park's 2011 safeguard) on each row r
    of ``u`` [R, T]: v = argmin 1/2 v^T A v subject to v >= u[r], as the linear complementarity
    problem x = v - u[r] >= 0, y = A x + A u[r] >= 0, x . y = 0 (A [T, T] positive definite),
    from the free set ``start[r]`` (the guess of the positive x's). Each sweep solves
    A_FF x_F = -(A u[r])_F by Cholesky and sets y outside F; the entries where x < -tol in F
    or y < -tol outside F move across, all at once while their number falls (three more tries
    otherwise), else only the last one; at most ``max_sweeps`` sweeps. Writes ``v`` [R, T], the
    final free sets ``free`` [R, T] and ``settled`` [R] (whether the row's last sweep moved
    nothing: a row that did not settle has no solution in ``v``); returns False, with the
    outputs incomplete, if a factorisation failed (A not numerically positive definite)."""
    rows, n = u.shape
    q = np.empty(n)
    x = np.empty(n)
    z = np.empty(n)
    f = np.empty(n, dtype=np.bool_)
    bad = np.empty(n, dtype=np.bool_)
    idx = np.empty(n, dtype=np.int64)
    sub = np.empty((n, n))
    rhs = np.empty(n)
    chol = np.empty((n, n))
    for r in range(rows):
        nz = 0
        for j in range(n):  # u[r]'s non-zero entries (UPGrad's rows have one)
            if u[r, j] != 0.0:
                idx[nz] = j
                nz += 1
        for k in range(n):  # q = A u[r] (the zero terms of the sum left out: the same sum)
            s = 0.0
            for i in range(nz):
                s += a[k, idx[i]] * u[r, idx[i]]
            q[k] = s
            f[k] = start[r, k]
            x[k] = 0.0
        best = n + 1
        tries = 3
        count = 1  # (no sweep yet: not settled)
        for _ in range(max_sweeps):
            w = 0
            for k in range(n):
                if f[k]:
                    idx[w] = k
                    w += 1
            for i in range(w):  # A_FF z = -q_F
                rhs[i] = -q[idx[i]]
                for j in range(i + 1):
                    sub[i, j] = a[idx[i], idx[j]]
            if not _cholesky_solve(sub[:w, :w], rhs[:w], chol, z):
                return False
            for k in range(n):
                x[k] = 0.0
            for i in range(w):
                x[idx[i]] = z[i]
            count = 0
            last = -1
            for k in range(n):  # y_k = (A x + q)_k, and the entries that violate their sign
                s = q[k]
                for i in range(w):
                    s += a[k, idx[i]] * z[i]
                bad[k] = x[k] < -tol if f[k] else s < -tol
                if bad[k]:
                    count += 1
                    last = k
            if count == 0:
                break
            if count < best:
                best = count
                tries = 3
            else:
                tries -= 1
            if tries >= 0:  # (also when the count fell: tries was just reset)
                for k in range(n):
                    if bad[k]:
                        f[k] = not f[k]
            else:
                f[last] = not f[last]
        settled[r] = count == 0
        for k in range(n):
            free[r, k] = f[k]
            v[r, k] = u[r, k] + (max(x[k], 0.0) if f[k] else 0.0)
    return True


@_compiled
def _barrier_objective(h: np.ndarray, x: np.ndarray, power: float) -> float:
    """1/2 x^T h x - sum_i psi(x_i), psi = log (power 1) or x^(1 - power) / (1 - power)."""
    n = h.shape[0]
    quad = 0.0
    barrier = 0.0
    for i in range(n):
        s = 0.0
        for j in range(n):
            s += h[i, j] * x[j]
        quad += x[i] * s
        barrier += np.log(x[i]) if power == 1.0 else x[i] ** (1.0 - power) / (1.0 - power)
    return 0.5 * quad - barrier


@_compiled
def fair_newton(h: np.ndarray, a: np.ndarray, max_iter: int, power: float) -> bool:
    """Damped Newton steps on 1/2 x^T h x - sum_i psi(x_i) (psi' = x^(-power); h [T, T] positive
    definite), in place on ``a`` > 0: Newton's direction by Cholesky, the step cut to keep x > 0
    (0.99 of the way to the boundary) and halved until it decreases the objective by a quarter
    of its predicted decrease, until the squared Newton decrement is at most 1e-24 or a step
    no longer decreases it, at most ``max_iter`` steps (the same iteration as
    :func:`mtbench.combiners.functional._fair_newton`'s NumPy loop). False if a Hessian was not
    numerically positive definite (``a`` then holds the last iterate)."""
    n = h.shape[0]
    hess = np.empty((n, n))
    chol = np.empty((n, n))
    grad = np.empty(n)
    step = np.empty(n)
    trial = np.empty(n)
    value = _barrier_objective(h, a, power)
    for _ in range(max_iter):
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += h[i, j] * a[j]
                hess[i, j] = h[i, j]
            inv = 1.0 / a[i] if power == 1.0 else a[i] ** (-power)
            grad[i] = s - inv
            hess[i, i] += 1.0 / (a[i] * a[i]) if power == 1.0 else power * inv / a[i]
        if not _cholesky_solve(hess, grad, chol, step):
            return False
        decrement = 0.0  # the squared Newton decrement
        for i in range(n):
            decrement += grad[i] * step[i]
        if not decrement > 1e-24:
            break
        t = 1.0
        for i in range(n):
            if step[i] > 0.0:
                t = min(t, 0.99 * (a[i] / step[i]))
        while True:
            for i in range(n):
                trial[i] = a[i] - t * step[i]
            trial_value = _barrier_objective(h, trial, power)
            if trial_value <= value - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        if not trial_value < value:
            break
        for i in range(n):
            a[i] = trial[i]
        value = trial_value
    return True


@_compiled
def _numpy_sum(a: np.ndarray) -> float:
    """``a.sum()`` of a contiguous float64 vector of at most 128 entries in NumPy's order: a
    plain loop below 8 entries, else eight running sums combined pairwise, then the rest."""
    n = a.shape[0]
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    stop = n - n % 8
    while i < stop:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@_compiled
def _affine_minimizer(g: np.ndarray, support: np.ndarray, m: int) -> tuple[np.ndarray, bool]:
    """The barycentric weights of the min-norm point of the affine hull of ``support[:m]`` (the
    KKT system [[G_SS, 1], [1^T, 0]] [a; mu] = [0; 1] by LAPACK's LU, as ``np.linalg.solve``),
    and False where that system is singular or its solution not finite (the NumPy loop then
    takes a least-squares solution instead)."""
    kkt = np.zeros((m + 1, m + 1))
    for i in range(m):
        for j in range(m):
            kkt[i, j] = g[support[i], support[j]]
        kkt[i, m] = 1.0
        kkt[m, i] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    try:
        x = np.linalg.solve(kkt, rhs)
    except Exception:  # singular
        return np.zeros(m), False
    for i in range(m + 1):
        if not np.isfinite(x[i]):
            return np.zeros(m), False
    alpha = x[:m].copy()
    total = _numpy_sum(alpha)
    if np.isfinite(total) and total != 0.0:
        alpha = alpha / total
    return alpha, True


@_compiled
def _products(g: np.ndarray, support: np.ndarray, m: int, w: np.ndarray) -> np.ndarray:
    """(G w)_i = sum_k G[i, support[k]] w[k] for every i, BLAS's gemv on the gathered columns."""
    n = g.shape[0]
    cols = np.empty((n, m))
    for i in range(n):
        for k in range(m):
            cols[i, k] = g[i, support[k]]
    return np.dot(cols, w)


@_compiled
def _minor_cycles(
    g: np.ndarray, sup: np.ndarray, m: int, w_s: np.ndarray, iterations: int, max_iter: int
) -> tuple[int, np.ndarray, int, bool]:
    """Wolfe's minor cycles on ``sup[:m]`` (in place) from the weights ``w_s``: towards the affine
    minimiser of the support, dropping points that leave the hull. Returns the new support's
    size, its weights, the iteration count, and False where an affine solve needed the NumPy
    loop's least-squares fallback."""
    while True:
        iterations += 1
        alpha, ok = _affine_minimizer(g, sup, m)
        if not ok:
            return m, w_s, iterations, False
        positive = True
        for k in range(m):
            if not alpha[k] > 0.0:
                positive = False
        if positive:
            return m, alpha, iterations, True
        drop = 0
        least = np.inf
        for k in range(m):  # the first blocking point to reach the hull's boundary
            if alpha[k] <= 0.0:
                step = w_s[k] - alpha[k]
                ratio = w_s[k] / step if step > 0.0 else 0.0
            else:
                ratio = np.inf
            if ratio < least:
                least = ratio
                drop = k
        theta = min(1.0, max(0.0, least))
        kept = 0
        moved = np.empty(m)
        for k in range(m):
            value = w_s[k] + theta * (alpha[k] - w_s[k])
            if value > 0.0 and k != drop:
                sup[kept] = sup[k]
                moved[kept] = value
                kept += 1
        m = kept
        w_s = moved[:m] / _numpy_sum(moved[:m])
        if iterations >= max_iter or m == 0:
            return m, w_s, iterations, True


@_compiled
def wolfe_min_norm(
    g: np.ndarray, tol: float, gap_floor: float, max_iter: int, warm: bool, support: np.ndarray, w_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Wolfe's min-norm-point algorithm, the same iteration as
    :func:`mtbench.combiners.functional._wolfe_np` (which documents it), on the symmetric
    float64 ``g`` [T, T]: with ``warm``, minor cycles from the active set ``support`` and its
    simplex weights ``w_start`` first; else from ``support``'s one vertex. Returns the best
    point's support and weights, and False where an affine solve needed the NumPy loop's
    least-squares fallback (nothing returned is an answer then: the caller runs that loop)."""
    n = g.shape[0]
    iterations = 0
    sup = np.empty(n + 1, dtype=np.int64)
    m = support.shape[0]
    sup[:m] = support
    w_s = w_start.copy()
    if warm:
        m, w_s, iterations, ok = _minor_cycles(g, sup, m, w_s, iterations, max_iter)
        if not ok:
            return sup[:0].copy(), w_s, False
        if m == 0:  # (every point dropped: cannot happen in exact arithmetic) start cold
            sup[0] = np.argmin(np.diag(g).copy())
            m = 1
            w_s = np.ones(1)
    best_obj = np.inf
    best_sup = sup[:m].copy()
    best_w = w_s.copy()
    prev_obj = np.inf
    while True:
        g_w = _products(g, sup, m, w_s)  # (G w)_i = x . g_i for the current point x
        on_support = np.empty(m)
        for k in range(m):
            on_support[k] = g_w[sup[k]]
        obj = np.dot(w_s, on_support)  # ||x||^2
        if obj < best_obj:
            best_obj = obj
            best_sup = sup[:m].copy()
            best_w = w_s.copy()
        if not obj < prev_obj:  # no progress left at working precision
            break
        prev_obj = obj
        j = np.argmin(g_w)
        gap = obj - g_w[j]
        inside = False
        for k in range(m):
            if sup[k] == j:
                inside = True
        if gap <= max(tol * obj, gap_floor) or inside or iterations >= max_iter:
            break
        sup[m] = j
        extended = np.zeros(m + 1)
        extended[:m] = w_s
        m, w_s, iterations, ok = _minor_cycles(g, sup, m + 1, extended, iterations, max_iter)
        if not ok:
            return sup[:0].copy(), w_s, False
        if m == 0:
            break
    return best_sup, best_w, True


@_compiled
def certified_solve(g: np.ndarray, rhs: np.ndarray, max_condition: float, out: np.ndarray) -> bool:
    """out = g^-1 rhs for the symmetric [n, n] ``g`` by its Cholesky factor L, when
    ||g||_F ||L^-1||_F^2 (a bound on its condition number) is at most ``max_condition``; False
    (``out`` untouched) when the factorisation fails or the bound is larger
    (:func:`mtbench.combiners.linalg.well_conditioned_solve` documents the certificate)."""
    n = g.shape[0]
    chol = np.zeros((n, n))
    if not _cholesky(g, chol):
        return False
    inv = np.zeros((n, n))  # L^-1, column by column
    for j in range(n):
        inv[j, j] = 1.0 / chol[j, j]
        for i in range(j + 1, n):
            s = 0.0
            for k in range(j, i):
                s -= chol[i, k] * inv[k, j]
            inv[i, j] = s / chol[i, i]
    fro = 0.0
    sq = 0.0
    for i in range(n):
        for j in range(n):
            fro += g[i, j] * g[i, j]
            sq += inv[i, j] * inv[i, j]
    if not np.sqrt(fro) * sq <= max_condition:
        return False
    y = np.zeros(n)
    for i in range(n):
        s = 0.0
        for k in range(i + 1):
            s += inv[i, k] * rhs[k]
        y[i] = s
    for i in range(n):
        s = 0.0
        for k in range(i, n):
            s += inv[k, i] * y[k]
        out[i] = s
    return True


@_compiled
def cagrad_candidate(
    g: np.ndarray,
    a: np.ndarray,
    s: float,
    n0: float,
    support: np.ndarray,
    lo: float,
    hi: float,
    tol: float,
    gap_floor: float,
) -> tuple[int, float, np.ndarray, np.ndarray, np.ndarray]:
    """One candidate of CAGrad's dual solve (the same steps as
    :func:`mtbench.combiners.functional._cagrad_piece` and the certificate in
    :func:`~mtbench.combiners.functional._cagrad_dual`, which document them): the root t of the
    piece on which ``support`` is the active set, and whether its weights are certified.
    Returns ``(code, t, w_c, negative, violated)``: code 0, the piece has no root in
    [lo, hi]; 1, certified (``w_c`` the weights on ``support``); 2, not certified (``negative``
    [m] and ``violated`` [T] give the next active set); 3, the piece's system is singular or
    its solution not finite (the caller takes the NumPy path, whose least squares handle it)."""
    n = g.shape[0]
    m = support.shape[0]
    empty_m = np.zeros(m, dtype=np.bool_)
    empty_n = np.zeros(n, dtype=np.bool_)
    kkt = np.zeros((m + 1, m + 1))
    rhs = np.zeros((m + 1, 2))
    for i in range(m):
        for j in range(m):
            kkt[i, j] = g[support[i], support[j]]
        kkt[i, m] = -1.0
        kkt[m, i] = 1.0
        rhs[i, 1] = -a[support[i]]
    rhs[m, 0] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except Exception:  # singular
        return 3, 0.0, np.zeros(m), empty_m, empty_n
    for i in range(m + 1):
        if not (np.isfinite(sol[i, 0]) and np.isfinite(sol[i, 1])):
            return 3, 0.0, np.zeros(m), empty_m, empty_n
    quad_a = 0.0
    quad_b = 0.0
    quad_c = 0.0
    for i in range(m):  # w0 . G_S w0, w0 . G_S w1, w1 . G_S w1
        g0 = 0.0
        g1 = 0.0
        for j in range(m):
            g0 += kkt[i, j] * sol[j, 0]
            g1 += kkt[i, j] * sol[j, 1]
        quad_a += sol[i, 0] * g0
        quad_b += sol[i, 0] * g1
        quad_c += sol[i, 1] * g1
    quad_c -= s * s
    disc = quad_b * quad_b - quad_a * quad_c
    if disc < 0.0:
        return 0, 0.0, np.zeros(m), empty_m, empty_n
    q = -(quad_b + np.copysign(np.sqrt(disc), quad_b))
    t = np.inf
    for r in ((q / quad_c) if quad_c != 0.0 else np.inf, (quad_a / q) if q != 0.0 else np.inf):
        if np.isfinite(r) and r > 0.0 and quad_b + quad_c * r <= 0.0 and r < t:
            t = r
    if not (np.isfinite(t) and lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12)):
        return 0, 0.0, np.zeros(m), empty_m, empty_n
    w_t = np.empty(m)
    biggest = 0.0
    for i in range(m):
        w_t[i] = sol[i, 0] + t * sol[i, 1]
        biggest = max(biggest, abs(w_t[i]))
    negative = np.empty(m, dtype=np.bool_)
    w_c = np.empty(m)
    total = 0.0
    any_negative = False
    for i in range(m):
        negative[i] = w_t[i] < -1e-12 * biggest
        any_negative = any_negative or negative[i]
        w_c[i] = max(w_t[i], 0.0)
        total += w_c[i]
    w_c /= total
    # the min-norm optimality at t of every task: (G_t w)_j >= w^T G_t w
    aw = 0.0
    for i in range(m):
        aw += a[support[i]] * w_c[i]
    gw = np.empty(n)
    top = -np.inf
    for j in range(n):
        v = 0.0
        for i in range(m):
            v += g[j, support[i]] * w_c[i]
        gw[j] = v
        top = max(top, g[j, j] + 2 * t * a[j] + t * t * n0)
    obj = 2 * t * aw + t * t * n0
    for i in range(m):
        obj += w_c[i] * gw[support[i]]
    bound = obj - max(tol * obj, gap_floor * top)
    violated = np.empty(n, dtype=np.bool_)
    any_violated = False
    for j in range(n):
        violated[j] = gw[j] + t * a[j] + t * (aw + t * n0) < bound
        any_violated = any_violated or violated[j]
    if not any_negative and not any_violated:
        return 1, t, w_c, negative, violated
    return 2, t, w_c, negative, violated


@_compiled
def dual_cone_weights(
    g: np.ndarray, upgrad: bool, start: np.ndarray, reg: float, max_sweeps: int, weights: np.ndarray, free: np.ndarray
) -> bool:
    """UPGrad's (``upgrad``) or DualProj's weights [T] from the symmetric float64 Gram matrix
    ``g`` in one call: the QPs of :func:`mtbench.combiners.functional.dual_cone_state` (the unit
    gradients' Gram matrix over its trace plus ``reg`` I, the preference rows) pivoted by
    :func:`dual_cone_pivots` from the free sets ``start`` [R, T], the same arithmetic as that
    function's NumPy code around the pivoting (sums in NumPy's order). Writes ``weights`` and
    the final free sets ``free``; False (outputs incomplete) where a gradient is zero, a
    factorisation failed or a row did not settle: the caller's general path handles those."""
    n = g.shape[0]
    norms = np.empty(n)
    inv = np.empty(n)
    for i in range(n):
        norms[i] = np.sqrt(max(g[i, i], 0.0))
        if not norms[i] > 0.0:
            return False
        inv[i] = 1.0 / norms[i]
    units = np.empty((n, n))
    diag = np.empty(n)
    for i in range(n):
        for j in range(n):
            units[i, j] = g[i, j] * inv[i] * inv[j]
        diag[i] = units[i, i]
    trace = _numpy_sum(diag)
    a = np.empty((n, n))
    top = -np.inf
    for i in range(n):
        for j in range(n):
            a[i, j] = units[i, j] / trace + (reg if i == j else 0.0)
        top = max(top, a[i, i])
    rows = n if upgrad else 1
    u = np.zeros((rows, n))
    biggest = 0.0
    for j in range(n):
        p = norms[j] / n
        if upgrad:
            u[j, j] = p
        else:
            u[0, j] = p
        biggest = max(biggest, abs(p))
    tol = 1e-13 * (top * max(biggest, 1e-300))
    v = np.empty((rows, n))
    settled = np.empty(rows, dtype=np.bool_)
    for r in range(rows):
        for j in range(n):
            free[r, j] = start[r, j]
    if not dual_cone_pivots(a, u, start.copy(), tol, max_sweeps, v, free, settled):
        return False
    for r in range(rows):
        if not settled[r]:
            return False
    for j in range(n):  # the rows' sum (NumPy's order along the first axis), then T and 1 / ||g_j||
        total = 0.0
        for r in range(rows):
            total += v[r, j]
        weights[j] = n * total * inv[j]
    return True

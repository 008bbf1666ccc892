"""Welch's two-sample t-test, with the Student t distribution computed here (no SciPy).

The comparison table asks, for each combiner, whether its mean (over seeds) of the primary
metric differs from the baseline's by more than the seed-to-seed spread explains. Seeds of one
combiner are independent runs; the two groups may have different variances, hence Welch's
unequal-variance test rather than Student's pooled one. Two-sided, uncorrected for the number
of combiners compared.

With three seeds per group the test has little power: only large, consistent differences come
out significant, and "not significant" does not mean "equal".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: the significance level the tables use
ALPHA = 0.05

_TINY = 1e-300
_EPS = 1e-15


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified
    Lentz method; converges quickly for x < (a + 1) / (a + b + 2)."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 10_000):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + num / c
        c = c if abs(c) > _TINY else _TINY
        result *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + num / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        result *= step
        if abs(step - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0 (got a={a}, b={b})")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1 (got x={x})")
    if x == 0.0 or x == 1.0:
        return x
    # x^a (1 - x)^b / B(a, b), in logs
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast region
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for T ~ Student t with ``df`` (> 0, not necessarily integer) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0 (got {df})")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for T ~ Student t with ``df`` degrees of freedom."""
    tail = t_sf_two_sided(t, df) / 2.0
    return 1.0 - tail if t > 0 else tail


@dataclass(frozen=True)
class WelchResult:
    diff: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float  # two-sided

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


def _mean_var(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, var, n


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) == mean(b), two-sided.

    Needs at least two values in each group. t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b)
    (s^2 the sample variances, n - 1), with the Welch–Satterthwaite degrees of freedom. When
    both groups have zero spread the p-value is 0 if the means differ and 1 if they do not.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per group (got {len(a)} and {len(b)})")
    ma, va, na = _mean_var(a)
    mb, vb, nb = _mean_var(b)
    diff = ma - mb
    qa, qb = va / na, vb / nb
    se2 = qa + qb
    if se2 == 0.0:
        if diff == 0.0:
            return WelchResult(diff, 0.0, float(na + nb - 2), 1.0)
        return WelchResult(diff, math.copysign(math.inf, diff), float(na + nb - 2), 0.0)
    t = diff / math.sqrt(se2)
    df = se2 * se2 / (qa * qa / (na - 1) + qb * qb / (nb - 1))
    return WelchResult(diff, t, df, t_sf_two_sided(t, df))

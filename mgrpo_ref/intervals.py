"""Paired differences with confidence intervals, and an accuracy with its interval: how the course states a claim (docs/paper.md section 7).

Two variants trained with the same seed share everything the seed decides (the training
questions in order, the adapter's initialisation, the evaluation's draws), so their
held-out accuracies are compared seed by seed: the difference d_s = a_s - b_s for each seed
s, then the mean of the n differences with a Student-t interval,

    mean(d) +- t_{1 - alpha/2, n - 1} * sd(d) / sqrt(n)

Pairing removes the seed-to-seed spread that both variants share, which an unpaired
comparison of two means would count twice.

The t interval assumes the mean of the differences is about normal, which a handful of
seeds whose runs either collapse or do not can break. The exact sign-flip test assumes
only that, with no difference between the variants, each d_s is as likely positive as
negative: of the 2^n ways to give the differences signs, the share whose sum is at least as
far from 0 as the observed one is its two-sided p-value. With n pairs that share is never
below 2 / 2^n (0.0625 for n = 5, 0.0078 for n = 8). A difference is called only where both
agree, the interval excluding 0 and p below 1 - confidence (:func:`paired_verdict`);
otherwise the comparison says "no measurable difference".

Pure Python (``math`` only): the t quantile comes from integrating the t density.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom.

    The density (1 + u^2/df)^(-(df+1)/2) times its constant is integrated from 0 to |x| by
    Simpson's rule after the substitution u = tan(theta) (which keeps the integrand smooth
    and bounded however large x is); accurate to about 1e-10 for df >= 1.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    end, steps = math.atan(abs(x)), 2000  # theta in [0, atan|x|], an even number of panels

    def integrand(theta: float) -> float:  # pdf(tan theta) * d(tan theta)/d theta
        u = math.tan(theta)
        return math.exp(log_c - (df + 1) / 2 * math.log1p(u * u / df)) / math.cos(theta) ** 2

    h = end / steps
    total = integrand(0.0) + integrand(end) + sum((4 if i % 2 else 2) * integrand(i * h) for i in range(1, steps))
    half = total * h / 3  # P(0 <= T <= |x|)
    return 0.5 + half if x >= 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """The x with P(T <= x) = p, for 0 < p < 1, by bisection on :func:`t_cdf`."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):  # 2^-60 of the bracket: far below the integration error
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """An estimate (the mean of paired differences, or a proportion) and its confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self, better: str = "higher", worse: str = "lower") -> str:
        """``better`` or ``worse`` when the interval excludes 0, else "no measurable difference"."""
        if not self.excludes_zero:
            return "no measurable difference"
        return better if self.low > 0 else worse


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95) -> Interval:
    """Mean of a_s - b_s over the pairs and its Student-t interval at ``confidence``.

    ``a`` and ``b`` are aligned pair by pair (by seed, or by question). With one pair the
    interval is unbounded (nothing is known about the spread); with differences all equal it
    has zero width.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists of paired values, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = [x - y for x, y in zip(a, b)]
    mean, n = statistics.fmean(d), len(d)
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, confidence)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


SIGN_FLIP_MAX_PAIRS = 22
"""The exact test lists all 2^n sums; past this many pairs that is too slow to be worth it."""


def sign_flip_p(differences: list[float]) -> float:
    """Two-sided p-value of the exact paired sign-flip test on ``differences`` (d_s = a_s - b_s).

    p = #{signs e in {-1, +1}^n : |sum_s e_s |d_s|| >= |sum_s d_s|} / 2^n, counting the
    observed signs too, so p >= 2 / 2^n whenever some d_s is not 0 and p = 1 when all are.
    Sums are compared with a tolerance of 1e-12 of sum_s |d_s|, so that float rounding does
    not split ties.
    """
    n = len(differences)
    if not 0 < n <= SIGN_FLIP_MAX_PAIRS:
        raise ValueError(f"the exact sign-flip test takes 1 to {SIGN_FLIP_MAX_PAIRS} pairs, got {n}")
    if not all(math.isfinite(d) for d in differences):
        raise ValueError(f"the exact sign-flip test needs finite differences, got {differences}")
    sums = [0.0]
    for d in differences:  # every signed sum of the first s differences, doubling each time
        sums = [x + abs(d) for x in sums] + [x - abs(d) for x in sums]
    observed = abs(sum(differences))
    tolerance = 1e-12 * sum(abs(d) for d in differences)
    return sum(abs(x) >= observed - tolerance for x in sums) / len(sums)


def sign_flip_floor(n: int) -> float:
    """The smallest p-value the exact sign-flip test can give on ``n`` pairs: 2 / 2^n (all
    differences of one sign; 1 for a single pair). Below 0.05 from six pairs on."""
    if n < 1:
        raise ValueError(f"need at least one pair, got {n}")
    return min(1.0, 2 / 2 ** n)


def paired_verdict(interval: Interval, p: float, better: str = "higher", worse: str = "lower") -> str:
    """``better`` or ``worse`` where the t interval excludes 0 and the exact test's ``p`` is
    below 1 - the interval's confidence; where only one of them calls it, "no measurable
    difference (the t interval alone)" or "(the exact test alone)"; otherwise "no
    measurable difference"."""
    by_t, by_exact = interval.excludes_zero, p < 1 - interval.confidence
    if by_t and by_exact:
        return interval.verdict(better, worse)
    if by_t or by_exact:
        return f"no measurable difference (the {'t interval' if by_t else 'exact test'} alone)"
    return "no measurable difference"


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """A share of successes, successes / n, and its Wilson score interval at ``confidence``.

    How an accuracy on n questions is drawn with its uncertainty (the question set as a sample).
    Unlike the normal approximation p +- z sqrt(p(1-p)/n), the Wilson interval stays inside
    [0, 1] and does not shrink to a point at 0% or 100%:

        centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p(1-p)/n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    low = 0.0 if successes == 0 else centre - half  # exact ends where rounding would leave 1e-17
    high = 1.0 if successes == n else centre + half
    return Interval(p, low, high, n, confidence)

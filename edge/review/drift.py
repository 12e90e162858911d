"""The statistics behind `review stats`: binomial band, two-sample KS test, PSI. Plain Python + numpy
(the edge runtime has no SciPy)."""

from __future__ import annotations

import math

import numpy as np

BAND_ALPHA = 0.01  # two-sided: a period is flagged when its referral count is this unlikely under the expected rate
KS_ALPHA = 0.01
PSI_ALERT = 0.25  # the usual "significant shift" rule of thumb for the population stability index
PSI_BINS = 10


def binomial_band(n: int, p: float, alpha: float = BAND_ALPHA) -> tuple[int, int]:
    """(lo, hi): the counts k with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2 for X ~ Binomial(n, p)."""
    if n <= 0:
        return 0, 0
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n
    log_p, log_q = math.log(p), math.log1p(-p)
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p
                    + (n - k) * log_q) for k in range(n + 1)]
    lo, total = 0, 0.0
    while lo < n and total + pmf[lo] <= alpha / 2:
        total += pmf[lo]
        lo += 1
    hi, total = n, 0.0
    while hi > 0 and total + pmf[hi] <= alpha / 2:
        total += pmf[hi]
        hi -= 1
    return lo, hi


def _kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (series; 1 for small lam)."""
    if lam < 0.2:
        return 1.0
    total = sum(2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return min(1.0, max(0.0, total))


def ks_two_sample(a, b) -> tuple[float, float]:
    """(D, p): the two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value
    (Stephens' small-sample correction, as in Numerical Recipes' kstwo)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                            - np.searchsorted(b, grid, side="right") / len(b))))
    ne = len(a) * len(b) / (len(a) + len(b))
    root = math.sqrt(ne)
    return d, _kolmogorov_q((root + 0.12 + 0.11 / root) * d)


def psi(reference, current, bins: int = PSI_BINS) -> float:
    """Population stability index of scores in [0, 1] over equal-width bins (empty bins count as 1e-4)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ref = np.histogram(np.clip(reference, 0, 1), edges)[0] / max(1, len(reference))
    cur = np.histogram(np.clip(current, 0, 1), edges)[0] / max(1, len(current))
    ref, cur = np.maximum(ref, 1e-4), np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def histogram(scores, bins: int = PSI_BINS) -> list[int]:
    return [int(c) for c in np.histogram(np.clip(scores, 0, 1), np.linspace(0.0, 1.0, bins + 1))[0]]

"""Uncertainty of evaluation metrics and of paired comparisons between methods.

- :func:`mean_se`: mean of per-example values and its standard error ``s / sqrt(n)`` (``s`` the
  sample standard deviation, ``n - 1`` in the denominator); 0 when ``n == 1``.
- :func:`ratio_se`: a token-weighted mean ``R = sum(a) / sum(b)`` (answer loss: NLL summed over
  tokens / tokens) and its delta-method standard error
  ``SE(R) = sqrt(n / (n - 1) * sum((a_i - R b_i)^2)) / sum(b)`` (Cochran, *Sampling Techniques*, 1977, §6.4).
- :func:`paired_comparison`: the mean of paired differences ``d_s = x_s - y_s`` over seeds with a
  two-sided Student-t confidence interval ``mean(d) ± t_{1-a/2, n-1} s_d / sqrt(n)`` and a verdict:
  ``better`` when the interval lies above 0, ``worse`` below, ``no difference detected`` otherwise
  (for a metric where lower is better, pass ``higher_is_better=False``).
- :func:`seeds_for_half_width`: how many paired seeds that interval needs for a given half-width,
  the smallest ``n >= 2`` with ``t_{1-a/2, n-1} s_d / sqrt(n) <= h`` (``s_d`` taken as known; a planning figure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["mean_se", "ratio_se", "PairedComparison", "paired_comparison", "t_quantile", "seeds_for_half_width"]

VERDICTS = ("better", "worse", "no difference detected")


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error)`` of ``values``; raises on an empty sequence."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def ratio_se(numerators: Sequence[float], denominators: Sequence[float]) -> tuple[float, float]:
    """``(sum(a) / sum(b), delta-method standard error)``; NaN ratio when ``sum(b) == 0``."""
    n, total = len(numerators), math.fsum(denominators)
    if n == 0 or total == 0:
        return float("nan"), float("nan")
    ratio = math.fsum(numerators) / total
    if n == 1:
        return ratio, 0.0
    resid = math.fsum((a - ratio * b) ** 2 for a, b in zip(numerators, denominators))
    return ratio, math.sqrt(n / (n - 1) * resid) / total


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedComparison:
    """A paired difference ``method - baseline`` over seeds: mean, CI, verdict and the pairs behind it."""

    n: int
    diff: float
    se: float
    ci_low: float
    ci_high: float
    verdict: str
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(method: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95,
                      higher_is_better: bool = True) -> PairedComparison:  # fmt: skip
    """Compare ``method[s]`` with ``baseline[s]`` paired by index (seed).

    Raises:
        ValueError: the sequences differ in length or hold fewer than 2 pairs (no interval exists).
    """
    if len(method) != len(baseline):
        raise ValueError(f"paired_comparison needs one baseline value per method value; got {len(method)} and {len(baseline)}")
    if len(method) < 2:
        raise ValueError(f"paired_comparison needs at least 2 paired seeds for an interval; got {len(method)}")
    diffs = [float(m) - float(b) for m, b in zip(method, baseline)]
    mean, se = mean_se(diffs)
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * se
    low, high = mean - half, mean + half
    if low > 0:
        verdict = "better" if higher_is_better else "worse"
    elif high < 0:
        verdict = "worse" if higher_is_better else "better"
    else:
        verdict = "no difference detected"
    return PairedComparison(len(diffs), mean, se, low, high, verdict, confidence)


def seeds_for_half_width(sd: float, half_width: float, *, confidence: float = 0.95, max_seeds: int = 100_000) -> int | None:
    """Smallest ``n >= 2`` whose paired t-interval ``t_{(1+c)/2, n-1} sd / sqrt(n)`` is at most ``half_width``.

    ``sd`` is the standard deviation of the paired differences (e.g. ``se * sqrt(seeds)`` of a finished
    comparison). None when more than ``max_seeds`` would be needed; 2 when ``sd`` is 0.
    """
    if half_width <= 0 or sd < 0:
        raise ValueError(f"seeds_for_half_width needs half_width > 0 and sd >= 0; got {half_width}, {sd}")
    from scipy.stats import t

    q = 0.5 + confidence / 2

    def fits(n: int) -> bool:
        return float(t.ppf(q, n - 1)) * sd / math.sqrt(n) <= half_width

    if fits(2):
        return 2
    if not fits(max_seeds):
        return None
    low, high = 2, max_seeds  # fits(low) is False, fits(high) is True; the half-width falls with n
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high

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
- :func:`paired_t_pvalue` and :func:`tost_pvalue`: the two-sided paired t-test of "no difference" and
  the two one-sided tests (TOST, Schuirmann 1987) of "the difference lies outside ±delta"; the latter
  is rejected at level a exactly when the ``1 - 2a`` interval lies inside ``(-delta, +delta)``.
- :func:`holm`: Holm's (1979) step-down adjusted p-values, which control the family-wise error rate.
- :func:`alpha_spent`: a Lan-DeMets (1983) alpha-spending function: the error allowed to be spent by
  information fraction ``t`` of a group-sequential design (Pocock-type ``a ln(1 + (e - 1) t)`` or
  O'Brien-Fleming-type ``2 - 2 Phi(z_{1-a/2} / sqrt(t))``).
- :func:`seeds_for_half_width`: how many paired seeds that interval needs for a given half-width,
  the smallest ``n >= 2`` with ``t_{1-a/2, n-1} s_d / sqrt(n) <= h`` (``s_d`` taken as known; a planning figure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["mean_se", "ratio_se", "PairedComparison", "paired_comparison", "t_quantile", "seeds_for_half_width",
           "paired_t_pvalue", "tost_pvalue", "holm", "alpha_spent", "SPENDING_FUNCTIONS"]

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


def _t_sf(x: float, df: int) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


def paired_t_pvalue(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of mean(diffs) = 0; 1.0 when every difference is 0.

    Raises:
        ValueError: fewer than 2 differences.
    """
    if len(diffs) < 2:
        raise ValueError(f"a paired t-test needs at least 2 differences; got {len(diffs)}")
    mean, se = mean_se([float(d) for d in diffs])
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    return min(1.0, 2.0 * _t_sf(abs(mean) / se, len(diffs) - 1))


def tost_pvalue(diffs: Sequence[float], delta: float) -> float:
    """p-value of the TOST equivalence test: the larger of the one-sided p-values of
    ``H0: mean <= -delta`` and ``H0: mean >= +delta``; small when the mean lies inside ``±delta``.

    Raises:
        ValueError: fewer than 2 differences or ``delta <= 0``.
    """
    if delta <= 0:
        raise ValueError(f"the equivalence margin delta must be > 0; got {delta}")
    if len(diffs) < 2:
        raise ValueError(f"an equivalence test needs at least 2 differences; got {len(diffs)}")
    mean, se = mean_se([float(d) for d in diffs])
    if se == 0:
        return 0.0 if abs(mean) < delta else 1.0
    df = len(diffs) - 1
    return max(_t_sf((mean + delta) / se, df), _t_sf((delta - mean) / se, df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort ascending, ``p~_(i) = max_{j <= i}
    min(1, (m - j + 1) p_(j))``; reject hypothesis i at family-wise level a when ``p~_i <= a``."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def _pocock(t: float, alpha: float) -> float:
    return alpha * math.log(1.0 + (math.e - 1.0) * t)


def _obrien_fleming(t: float, alpha: float) -> float:
    from scipy.stats import norm

    return 0.0 if t <= 0 else float(2.0 - 2.0 * norm.cdf(norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))


SPENDING_FUNCTIONS = {"pocock": _pocock, "obrien-fleming": _obrien_fleming}
"""Lan-DeMets spending functions ``alpha(t)``, ``alpha(0) = 0`` and ``alpha(1) = alpha``."""


def alpha_spent(kind: str, t: float, alpha: float) -> float:
    """Error spent by information fraction ``t`` in [0, 1] under spending function ``kind``."""
    if kind not in SPENDING_FUNCTIONS:
        raise ValueError(f"unknown alpha-spending function {kind!r}; use one of {sorted(SPENDING_FUNCTIONS)}")
    return SPENDING_FUNCTIONS[kind](min(max(float(t), 0.0), 1.0), alpha)

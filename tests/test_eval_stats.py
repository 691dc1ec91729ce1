"""fedlora.eval.stats: standard errors and paired comparisons against hand computations and scipy."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as sps

from fedlora.eval.stats import mean_se, paired_comparison, ratio_se, seeds_for_half_width


def test_mean_se_is_the_sample_std_over_root_n():
    values = [0.0, 1.0, 1.0, 0.0, 1.0]
    mean, se = mean_se(values)
    assert mean == 0.6 and se == pytest.approx(statistics.stdev(values) / math.sqrt(5))
    assert mean_se([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError):
        mean_se([])


def test_ratio_se_by_hand():
    a, b = [2.0, 4.0, 3.0], [1.0, 2.0, 3.0]  # R = 9 / 6 = 1.5; residuals 0.5, 1.0, -1.5
    ratio, se = ratio_se(a, b)
    assert ratio == 1.5
    assert se == pytest.approx(math.sqrt(3 / 2 * (0.25 + 1.0 + 2.25)) / 6)


def test_paired_comparison_matches_scipy_paired_t_interval():
    method, baseline = [0.61, 0.58, 0.64, 0.60, 0.62], [0.55, 0.57, 0.59, 0.52, 0.58]
    result = paired_comparison(method, baseline)
    ci = sps.ttest_rel(method, baseline).confidence_interval(0.95)
    assert result.diff == pytest.approx(statistics.mean(m - b for m, b in zip(method, baseline)))
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
    assert result.verdict == "better" and result.n == 5


@pytest.mark.parametrize(("method", "baseline", "higher", "verdict"), [
    ([0.1, 0.2, 0.15], [0.3, 0.35, 0.32], True, "worse"),
    ([0.1, 0.2, 0.15], [0.3, 0.35, 0.32], False, "better"),   # lower is better (a loss)
    ([0.5, 0.4, 0.6], [0.45, 0.5, 0.55], True, "no difference detected"),
])
def test_verdicts(method, baseline, higher, verdict):
    assert paired_comparison(method, baseline, higher_is_better=higher).verdict == verdict


def test_paired_comparison_needs_pairs():
    with pytest.raises(ValueError, match="one baseline value per method value"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [1.0])


def test_seeds_for_half_width_by_hand_and_brute_force():
    # sd 0.1, half-width 0.02: t(0.975, 98) / sqrt(99) = 1.98447 / 9.94987 = 0.19945 <= 0.2,
    # t(0.975, 97) / sqrt(98) = 1.98472 / 9.89949 = 0.20049 > 0.2, so 99 seeds
    assert seeds_for_half_width(0.1, 0.02) == 99
    for sd, h in [(0.05, 0.02), (0.3, 0.02), (0.01, 0.05), (0.12, 0.08), (1.0, 0.5)]:
        half = [sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) for n in range(2, 5000)]
        assert seeds_for_half_width(sd, h) == next(n for n, w in zip(range(2, 5000), half) if w <= h), (sd, h)
    assert seeds_for_half_width(0.0, 0.02) == 2
    assert seeds_for_half_width(10.0, 1e-4, max_seeds=1000) is None
    assert seeds_for_half_width(0.1, 0.02, confidence=0.99) > 99
    with pytest.raises(ValueError):
        seeds_for_half_width(0.1, 0.0)

"""Pre-registered claims: Holm, TOST, alpha spending and the sequential verdicts, against hand
computations and their definitions; the pre-registration file and its lock."""

from __future__ import annotations

import json
import random

import pytest

from fedlora.bench.design import ClaimSpec, PreregistrationError, analyse_claim, check_or_write_preregistration, parse_claims
from fedlora.bench.results import CellRow, endpoint_value
from fedlora.eval.stats import alpha_spent, holm, mean_se, paired_t_pvalue, t_quantile, tost_pvalue

# ----------------------------------------------------------------------------- the tests themselves


def test_holm_matches_a_hand_computation():
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_tost_rejects_exactly_when_the_1_minus_2a_interval_lies_inside_the_margin():
    rng = random.Random(1)
    for _ in range(300):
        n, delta, a = rng.randint(2, 12), rng.choice([0.01, 0.02, 0.05]), 0.05
        diffs = [rng.gauss(rng.uniform(-0.03, 0.03), rng.uniform(0.001, 0.03)) for _ in range(n)]
        mean, se = mean_se(diffs)
        half = t_quantile(1 - a, n - 1) * se
        inside = -delta < mean - half and mean + half < delta
        assert (tost_pvalue(diffs, delta) <= a) == inside


def test_paired_t_pvalue_agrees_with_the_95_percent_interval():
    rng = random.Random(2)
    for _ in range(200):
        diffs = [rng.gauss(0.01, 0.02) for _ in range(rng.randint(2, 10))]
        mean, se = mean_se(diffs)
        excludes_zero = abs(mean) > t_quantile(0.975, len(diffs) - 1) * se
        assert (paired_t_pvalue(diffs) < 0.05) == excludes_zero


def test_alpha_spending_reaches_alpha_at_the_cap_and_grows():
    for kind in ("pocock", "obrien-fleming"):
        spent = [alpha_spent(kind, t, 0.05) for t in (0.25, 0.5, 0.75, 1.0)]
        assert spent == sorted(spent) and spent[-1] == pytest.approx(0.05) and alpha_spent(kind, 0.0, 0.05) == 0.0
    assert alpha_spent("pocock", 0.5, 0.05) == pytest.approx(0.05 * 0.6201145, rel=1e-6)  # a ln(1 + (e - 1) / 2)
    with pytest.raises(ValueError, match="pocock"):
        alpha_spent("pocok", 0.5, 0.05)


# ----------------------------------------------------------------------------- sequential verdicts


def _row(method, dist, seed, values, plan=None):
    records = [{"type": "eval", "split": "heldout", "round": r, "rougeL": v} for r, v in enumerate(values, 1)]
    return CellRow(f"{method}__{dist}__seed{seed}", method, dist, seed, {}, 0, 0, 0.0, 1, len(values), records, plan)


def _claim(**kw):
    base = dict(name="c", text="", method="m", family=("b",), distributions=("d",), endpoint="heldout/rougeL", last_rounds=1,
                delta=0.02, alpha=0.05, looks=(3, 6), spending="pocock", exploratory=())
    return ClaimSpec(**{**base, **kw})


def test_endpoint_is_the_mean_of_the_last_rounds():
    rec = _row("m", "d", 0, [0.1, 0.3, 0.5]).records
    assert endpoint_value(rec, "heldout/rougeL", 2) == pytest.approx(0.4)
    assert endpoint_value(rec, "heldout/rougeL", 4) is None
    untrained = [{"type": "eval", "split": "heldout", "round": 0, "rougeL": 0.2}]
    assert endpoint_value(untrained, "heldout/rougeL", 2) == 0.2  # the no-train baseline: round 0 only


def test_a_clear_gain_is_decided_better_at_the_first_look():
    rows = [_row("m", "d", s, [0.5 + 0.01 * s]) for s in range(6)] + [_row("b", "d", s, [0.3 + 0.01 * s + 0.001 * (s % 2)]) for s in range(6)]
    st = analyse_claim(_claim(), rows, list(range(6)))
    assert st.status == "decided" and st.looks_done == (3,) and st.comparisons[0].verdict == "better"
    assert st.comparisons[0].look == 3 and st.comparisons[0].alpha_look == pytest.approx(alpha_spent("pocock", 0.5, 0.05))


def test_a_tiny_difference_is_equivalent_and_noise_reaches_the_cap():
    rng = random.Random(3)
    same = [_row("m", "d", s, [0.5 + 0.001 * rng.random()]) for s in range(6)] + [_row("b", "d", s, [0.5]) for s in range(6)]
    assert analyse_claim(_claim(), same, list(range(6))).comparisons[0].verdict == "equivalent within δ"
    noisy = [_row("m", "d", s, [0.5 + rng.gauss(0, 0.2)]) for s in range(6)] + [_row("b", "d", s, [0.5]) for s in range(6)]
    first = analyse_claim(_claim(), noisy[:3] + noisy[6:9], list(range(6)))
    assert first.status == "continue" and first.next_look == 6
    last = analyse_claim(_claim(), noisy, list(range(6)))
    assert last.status == "cap reached" and last.comparisons[0].verdict == "no difference detected" and last.half_width > 0.02


def test_holm_over_the_family_withholds_what_one_comparison_alone_would_decide():
    """p = 0.018 per comparison: decided alone (Holm over 2 hypotheses: 0.035), not among 8 (4 comparisons x 2 tests:
    8 x 0.018 > 0.05)."""
    diffs = [0.02, 0.06, 0.03, 0.07, 0.0, 0.04]
    p = paired_t_pvalue(diffs)
    assert 0.05 / 8 < p < 0.05 / 2
    rows = [_row("b", d, s, [0.5]) for d in "wxyz" for s in range(6)]
    rows += [_row("m", d, s, [0.5 + diffs[s]]) for d in "wxyz" for s in range(6)]
    alone = analyse_claim(_claim(distributions=("w",), looks=(6,)), rows, list(range(6)))
    family = analyse_claim(_claim(distributions=tuple("wxyz"), looks=(6,)), rows, list(range(6)))
    assert alone.comparisons[0].verdict == "better" and alone.comparisons[0].adjusted_p_difference == pytest.approx(2 * p)
    assert {c.verdict for c in family.comparisons} == {"no difference detected"} and family.status == "cap reached"


def test_a_look_needs_the_first_declared_seeds_of_every_comparison_and_references_pair_everywhere():
    rows = [_row("m", d, s, [0.6]) for d in ("d", "e") for s in range(3)] + [_row("b", "d", s, [0.4 + 0.01 * s]) for s in range(3)]
    rows += [_row("b", "e", s, [0.4 + 0.01 * s]) for s in (0, 1, 3)]  # seed 2 missing under e
    assert analyse_claim(_claim(distributions=("d", "e")), rows, list(range(6))).status == "waiting"
    ref = [_row("m", d, s, [0.6 + 0.01 * s]) for d in ("d", "e") for s in range(3)] + [_row("r", "d", s, [0.1], plan="no-train") for s in range(3)]
    st = analyse_claim(_claim(family=("r",), distributions=("d", "e")), ref, list(range(6)))
    assert [(c.distribution, c.seeds) for c in st.comparisons] == [("d", 3), ("e", 3)]


def test_exploratory_comparisons_are_unadjusted_and_flagged():
    rows = [_row("m", "d", s, [0.6 + 0.01 * s]) for s in range(3)] + [_row(x, "d", s, [0.4 + 0.02 * s]) for x in "bx" for s in range(3)]
    st = analyse_claim(_claim(exploratory=("x",)), rows, list(range(6)))
    (ex,) = st.exploratory
    assert ex.exploratory and ex.adjusted_p_difference is None and ex.confidence == 0.95 and ex.baseline == "x"


# ----------------------------------------------------------------------------- declaration and lock


def test_claims_are_validated_with_every_error_named():
    errors: list[str] = []
    parse_claims({"c": {"method": "m", "family": ["bb"], "endpoint": "rougeL", "looks": [5, 3], "deltaa": 1}}, ["m", "b"], ["d"], [0, 1], errors)
    text = "\n".join(errors)
    assert "claims.c.deltaa: unknown key; did you mean 'delta'?" in text
    assert "'bb' is not a method of this bench; did you mean 'b'?" in text
    assert "claims.c.endpoint = 'rougeL'" in text and "claims.c.looks = [5, 3]" in text
    errors.clear()
    parse_claims({"c": {"method": "m", "family": ["b"], "endpoint": "heldout/rougeL", "looks": [2, 4]}}, ["m", "b"], ["d"], [0, 1], errors)
    assert errors == ["claims.c.looks: the cap 4 exceeds the 2 seeds of bench.seeds; list at least 4 seeds"]


class _Bench:
    def __init__(self, lr=1e-3):
        self.name, self.path, self.claims, self.methods, self.distributions = "b", None, (_claim(),), (), ()
        self.base, self.seeds, self.overrides = {"train": {"lr": lr}}, (0, 1, 2), ("run.threads=1",)


def test_preregistration_is_written_once_and_locks_after_a_finished_cell(tmp_path):
    path = check_or_write_preregistration(_Bench(), tmp_path, "abc", finished_cells=0)
    first = json.loads(path.read_text())
    assert first["git_commit"] == "abc" and first["design"]["claims"][0]["looks"] == [3, 6] and "Holm" in first["analysis"]
    assert first["design"]["overrides"] == []  # run.threads says how fast, not what
    check_or_write_preregistration(_Bench(), tmp_path, "later", finished_cells=5)
    assert json.loads(path.read_text())["git_commit"] == "abc"  # the same design: kept as written
    with pytest.raises(PreregistrationError, match="new experiment"):
        check_or_write_preregistration(_Bench(lr=1e-2), tmp_path, "later", finished_cells=1)
    check_or_write_preregistration(_Bench(lr=1e-2), tmp_path, "later", finished_cells=0)  # nothing ran: may change
    assert json.loads(path.read_text())["design_sha256"] != first["design_sha256"]

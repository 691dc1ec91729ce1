"""FlexLoRA resource distributions, memory budgets and byte sizes (fedlora.allocation.profiles)."""

from __future__ import annotations

from collections import Counter

import pytest

from fedlora.allocation.profiles import (
    RANK_DISTRIBUTIONS,
    budget_levels,
    budgets_from_list,
    level_probabilities,
    parse_bytes,
    sample_budgets,
    sample_ranks,
)

LEVELS = (4, 8, 16, 32)


def test_probabilities_follow_flexlora():
    assert level_probabilities("uniform", 4) == [0.25] * 4
    assert level_probabilities("heavy-tail-light", 4) == pytest.approx([0.85, 0.05, 0.05, 0.05])
    assert level_probabilities("heavy-tail-strong", 4) == pytest.approx([0.05, 0.05, 0.05, 0.85])
    normal = level_probabilities("normal", 4)
    assert sum(normal) == pytest.approx(1.0) and normal[1] == normal[2] > 5 * normal[0] and normal[0] == normal[3]


@pytest.mark.parametrize("dist, expected", [
    ("uniform", {4: 5, 8: 5, 16: 5, 32: 5}),
    ("heavy-tail-light", {4: 17, 8: 1, 16: 1, 32: 1}),
    ("heavy-tail-strong", {4: 1, 8: 1, 16: 1, 32: 17}),
    ("normal", {4: 1, 8: 9, 16: 9, 32: 1}),
])  # fmt: skip
def test_quota_counts_per_level(dist, expected):
    assert Counter(sample_ranks(dist, 20, rank_levels=LEVELS, seed=1)) == expected


def test_seeded_and_shuffled():
    a = sample_ranks("uniform", 12, rank_levels=LEVELS, seed=5)
    assert a == sample_ranks("uniform", 12, rank_levels=LEVELS, seed=5)
    assert a != sample_ranks("uniform", 12, rank_levels=LEVELS, seed=6)
    assert a != sorted(a)


def test_aliases_of_the_official_code_are_accepted():
    assert sample_ranks("heavy_tail", 5, rank_levels=LEVELS) == sample_ranks("heavy-tail-light", 5, rank_levels=LEVELS)
    assert sample_ranks("random", 5, rank_levels=LEVELS) == sample_ranks("uniform", 5, rank_levels=LEVELS)
    assert set(RANK_DISTRIBUTIONS) == {"uniform", "heavy-tail-light", "heavy-tail-strong", "normal"}


@pytest.mark.parametrize("call, match", [
    (lambda: sample_ranks("pareto", 3), "unknown resource distribution 'pareto'; use one of .*heavy-tail-light"),
    (lambda: sample_ranks("uniform", 0), "num_clients must be a positive int, got 0"),
    (lambda: sample_ranks("uniform", 3, rank_levels=(0, 4)), "rank_levels must be positive"),
    (lambda: budgets_from_list(["1GiB"], 2), "1 values for 2 clients"),
    (lambda: parse_bytes("12 parsecs"), "cannot read memory size '12 parsecs'"),
    (lambda: parse_bytes(-5), "positive"),
    (lambda: budget_levels(10, 5, 3), "low_bytes <= high_bytes"),
])  # fmt: skip
def test_errors_name_value_and_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_budgets():
    assert budget_levels(2**30, 8 * 2**30, 4) == [2**30, 2 * 2**30, 4 * 2**30, 8 * 2**30]
    budgets = sample_budgets("heavy-tail-light", 20, low_bytes="1GiB", high_bytes="8GiB", seed=0)
    assert Counter(budgets)[2**30] == 17
    assert budgets_from_list(["512MiB", 1000, "1.5 GiB"], 3) == [512 * 2**20, 1000, 3 * 2**29]
    assert parse_bytes("2GB") == 2 * 10**9

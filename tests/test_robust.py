"""Robust averages (coordinate median, trimmed mean) against hand computations, and in FedIT / FFA-LoRA."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, simulate_client

from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.robust import coordinate_median, robust_average, trimmed_mean
from fedlora.strategies import make_strategy


def test_coordinate_median_by_hand():
    ts = [torch.tensor([1.0, 10.0]), torch.tensor([2.0, -5.0]), torch.tensor([100.0, 0.0])]
    assert coordinate_median(ts).tolist() == [2.0, 0.0]
    assert coordinate_median(ts + [torch.tensor([3.0, 1.0])]).tolist() == [2.5, 0.5]  # even K: middle two averaged


def test_trimmed_mean_by_hand():
    ts = [torch.tensor([v]) for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert trimmed_mean(ts, 0.2).item() == pytest.approx(3.0)  # drop 1 and 1000
    assert trimmed_mean(ts, 0.0).item() == pytest.approx(202.0)
    with pytest.raises(ValueError):
        trimmed_mean(ts, 0.5)
    assert robust_average(ts, [0.2] * 5, "mean").item() == pytest.approx(202.0)


@pytest.mark.parametrize("name", ["fedit", "ffa"])
@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_a_minority_of_wild_clients_barely_moves_a_robust_average(name, rule):
    def run(robust, wild):
        s = make_strategy(name, seed=0, shapes=SHAPES, robust=robust, trim=0.2)
        plans = [make_plan(f"c{k}", {Q: 2, UP: 3}) for k in range(5)]
        payloads = s.configure(1, plans)
        gen = torch.Generator().manual_seed(0)
        ups = [simulate_client(payloads[p.client_id], gen, 3) for p in plans]
        if wild:
            f = ups[4].factors[Q]
            ups[4] = Update("c4", {**ups[4].factors, Q: LoraFactors(f.A, f.B * 50.0, f.alpha)}, 3)
        s.aggregate(1, ups)
        return s.global_adapter()[Q].delta()

    clean, poisoned = run(rule, False), run(rule, True)
    mean_shift = float((run("mean", True) - run("mean", False)).norm())
    assert float((poisoned - clean).norm()) < 0.2 * mean_shift


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="robust must be one of"):
        make_strategy("fedit", robust="krum")

"""Hostile and faulty updates never crash a round or leave a non-finite global state (every strategy).

Each case: three honest clients and one hostile one (or two clients where the case needs no
majority), aggregated through ``fedlora.strategies.guard.guarded_aggregate`` as the engine and the
Flower server do. The round completes, the global state stays finite, the hostile client is
rejected with a reason, and nothing trained before is lost.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, simulate_client

from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies import STRATEGY_NAMES, make_strategy
from fedlora.strategies.guard import guarded_aggregate, outlier_updates, update_norm

HETERO = {"flexlora", "hetlora", "flora", "local"}


def _ranks(name: str, k: int) -> dict[str, int]:
    return {Q: 1 + k % 3, UP: 3 - k % 2} if name in HETERO else {Q: 2, UP: 3}


def _finite(strategy) -> bool:
    adapters = [strategy.global_adapter()] + list(getattr(strategy, "evaluation_adapters", lambda: {})().values())
    return all(torch.isfinite(f.A).all() and torch.isfinite(f.B).all() and math.isfinite(f.alpha) for a in adapters for f in a.values())


def _honest_round(strategy, server_round: int, n_clients: int = 4):
    gen = torch.Generator().manual_seed(server_round)
    plans = [make_plan(f"c{k}", _ranks(strategy.name, k)) for k in range(n_clients)]
    payloads = strategy.configure(server_round, plans)
    return [simulate_client(payloads[p.client_id], gen, 5 + k) for k, p in enumerate(plans)]


def _swap(update: Update, module: str, factors) -> Update:
    return Update(update.client_id, {**update.factors, module: factors}, update.num_examples)


def _scaled(f: LoraFactors, by: float) -> LoraFactors:
    return LoraFactors(f.A * by, f.B * by, f.alpha)


HOSTILE = {
    "huge finite values": lambda u: _swap(u, Q, _scaled(u.factors[Q], 1e19)),
    "mildly huge values": lambda u: _swap(u, Q, _scaled(u.factors[Q], 1e4)),
    "alpha 1e300": lambda u: _swap(u, Q, LoraFactors(u.factors[Q].A, u.factors[Q].B, 1e300)),
    "num_examples 10**400": lambda u: Update(u.client_id, u.factors, 10**400),
    "num_examples negative": lambda u: Update(u.client_id, u.factors, -3),
    "numpy factors": lambda u: _swap(u, Q, LoraFactors(np.ones(tuple(u.factors[Q].A.shape)), u.factors[Q].B, u.factors[Q].alpha)),
    "smaller shape": lambda u: _swap(u, Q, LoraFactors(u.factors[Q].A[:, :5], u.factors[Q].B[:6], u.factors[Q].alpha)),
    "NaN": lambda u: _swap(u, Q, LoraFactors(u.factors[Q].A, u.factors[Q].B * float("nan"), u.factors[Q].alpha)),
    "int tensors": lambda u: _swap(u, Q, LoraFactors(u.factors[Q].A.int(), u.factors[Q].B.int(), u.factors[Q].alpha)),
    "not factors": lambda u: _swap(u, Q, "A and B"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_a_hostile_update_is_rejected_and_the_state_stays_finite(name, case):
    strategy = make_strategy(name, seed=0, shapes=SHAPES)
    guarded_aggregate(strategy, 1, _honest_round(strategy, 1))  # something already trained
    updates = _honest_round(strategy, 2)
    updates[3] = HOSTILE[case](updates[3])
    result = guarded_aggregate(strategy, 2, updates)
    assert "c3" in result.rejected and result.rejected["c3"]
    assert _finite(strategy)
    assert set(result.accepted) == {"c0", "c1", "c2"} or not result.accepted  # rolled back as a whole at worst
    nxt = strategy.configure(3, [make_plan(f"c{k}", _ranks(name, k)) for k in range(4)])
    assert all(torch.isfinite(f.A).all() and torch.isfinite(f.B).all() for p in nxt.values() for f in p.init.values())


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_an_overflowing_aggregate_is_rolled_back_with_two_clients(name):
    strategy = make_strategy(name, seed=0, shapes=SHAPES)
    guarded_aggregate(strategy, 1, _honest_round(strategy, 1, 2))
    before = strategy.state_dict()
    updates = _honest_round(strategy, 2, 2)
    updates = [_swap(u, Q, _scaled(u.factors[Q], 1e19)) for u in updates]  # no majority to call either an outlier
    result = guarded_aggregate(strategy, 2, updates)
    assert _finite(strategy)
    if not result.accepted:  # overflowed (or a frozen factor changed: FFA-LoRA, FedSVD, RoLoRA): the state is as before
        assert any(w in next(iter(result.rejected.values())) for w in ("left as it was", "frozen A", "frozen B"))
        after = strategy.state_dict()
        for key in ("global", "clients"):
            if key in before:
                assert str(before[key]) == str(after[key])


def test_a_crashing_aggregate_is_rolled_back():
    strategy = make_strategy("flexlora", seed=0, shapes=SHAPES)
    guarded_aggregate(strategy, 1, _honest_round(strategy, 1))
    before = {m: f.delta() for m, f in strategy.global_adapter().items()}
    real = strategy.aggregate

    def crash(*args, **kwargs):
        real(*args, **kwargs)
        raise np.linalg.LinAlgError("SVD did not converge")

    strategy.aggregate = crash
    result = guarded_aggregate(strategy, 2, _honest_round(strategy, 2))
    assert not result.accepted and "SVD did not converge" in result.rejected["c0"]
    for m, d in before.items():
        torch.testing.assert_close(strategy.global_adapter()[m].delta(), d)


def test_update_norm_is_the_frobenius_norm_of_the_scale_aware_delta():
    gen = torch.Generator().manual_seed(0)
    f = LoraFactors(torch.randn(3, 10, generator=gen), torch.randn(12, 3, generator=gen), 6.0)
    g = LoraFactors(torch.randn(2, 10, generator=gen), torch.randn(16, 2, generator=gen), 1.0)
    expected = math.sqrt(float(torch.linalg.matrix_norm(f.delta(torch.float64))) ** 2 + float(torch.linalg.matrix_norm(g.delta(torch.float64))) ** 2)
    assert update_norm(Update("c", {Q: f, UP: g}, 1)) == pytest.approx(expected, rel=1e-10)


def test_outliers_need_a_majority_and_respect_the_bound():
    gen = torch.Generator().manual_seed(0)
    base = [Update(f"c{k}", {Q: LoraFactors(torch.randn(2, 10, generator=gen), torch.randn(12, 2, generator=gen), 2.0)}, 1) for k in range(4)]
    big = Update("c3", {Q: _scaled(base[3].factors[Q], 30.0)}, 1)  # norm x 900
    assert set(outlier_updates(base[:3] + [big])) == {"c3"}
    assert outlier_updates(base[:3] + [big], norm_bound=1000.0) == {}
    assert outlier_updates(base[:1] + [big]) == {}  # two updates: no majority to judge by
    assert outlier_updates(base[:3] + [big], norm_bound=0) == {}

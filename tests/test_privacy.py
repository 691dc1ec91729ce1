"""Client-level DP (DP-FedAvg on the averaged LoRA factors) and its accountant."""

from __future__ import annotations

import math

import pytest
import torch

from test_engine import data_file, tiny_config  # noqa: F401  (fixture)
from test_strategies_common import Q, SHAPES, UP, make_plan, simulate_client

from fedlora.config import ConfigError
from fedlora.engine.run import Engine
from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies import make_strategy
from fedlora.strategies.dp import _ORDERS, DPFedAvg, clip_update, epsilon_spent


def _round(strategy, server_round, n=4, scale=1.0):
    gen = torch.Generator().manual_seed(server_round)
    plans = [make_plan(f"c{k}", {Q: 2, UP: 3}) for k in range(n)]
    payloads = strategy.configure(server_round, plans)
    ups = [simulate_client(payloads[p.client_id], gen, 7) for p in plans]
    return [Update(u.client_id, {m: LoraFactors(f.A, f.B * scale, f.alpha) for m, f in u.factors.items()}, u.num_examples) for u in ups]


def test_clip_update_bounds_the_norm_in_the_averaged_coordinates():
    start = {Q: LoraFactors(torch.zeros(2, 10), torch.zeros(12, 2), 4.0)}
    upd = {Q: LoraFactors(torch.ones(2, 10), torch.ones(12, 2), 4.0)}  # delta (A, sB): 20 ones and 24 twos
    out, norm = clip_update(upd, start, 1.0, train_A=True)
    assert norm == pytest.approx(math.sqrt(20 + 24 * 4))
    f = out[Q]
    assert math.sqrt(float(f.A.double().square().sum() + (f.scale * f.B.double()).square().sum())) == pytest.approx(1.0)
    same, _ = clip_update(upd, start, 1e9, train_A=True)
    assert torch.equal(same[Q].A, upd[Q].A) and torch.allclose(same[Q].B, upd[Q].B)


@pytest.mark.parametrize("name", ["fedit", "ffa"])
def test_noise_zero_and_an_unreached_bound_equal_the_plain_method(name):
    plain = make_strategy(name, seed=0, shapes=SHAPES)
    dp = DPFedAvg(make_strategy(name, seed=0, shapes=SHAPES), clip_norm=1e9, noise_multiplier=0.0, population=4, per_round=4)
    for rnd in (1, 2):
        plain.aggregate(rnd, _round(plain, rnd))
        result = dp.aggregate(rnd, _round(dp, rnd))
        assert result.metrics["privacy/epsilon"] == math.inf
    for m, f in plain.global_adapter().items():
        g = dp.global_adapter()[m]
        torch.testing.assert_close(g.delta(), f.delta(), rtol=1e-6, atol=1e-7)


def test_noise_has_the_dp_fedavg_scale_and_is_seeded():
    runs = []
    for _ in range(2):
        dp = DPFedAvg(make_strategy("fedit", seed=0, shapes=SHAPES), clip_norm=0.5, noise_multiplier=2.0, population=100,
                      per_round=4, seed=3)  # fmt: skip
        ref = DPFedAvg(make_strategy("fedit", seed=0, shapes=SHAPES), clip_norm=0.5, noise_multiplier=0.0, population=100,
                       per_round=4, seed=3)  # fmt: skip
        dp.aggregate(1, _round(dp, 1))
        ref.aggregate(1, _round(ref, 1))
        noise = torch.cat([(dp.global_adapter()[m].A - ref.global_adapter()[m].A).flatten() for m in (Q, UP)])
        runs.append(noise)
        assert float(noise.std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.2)
    assert torch.equal(runs[0], runs[1])


def test_epsilon_matches_the_accountant_computed_directly():
    import dp_accounting as dpa
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(list(_ORDERS), dpa.NeighboringRelation.REPLACE_ONE)
    for _ in range(5):  # replace-one: the clipped sum moves by 2C, so sigma C is a multiplier of sigma / 2
        acc.compose(dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(1.1 / 2)))
    expected = acc.get_epsilon(1e-5)
    assert epsilon_spent(5, population=100, per_round=10, noise_multiplier=1.1, delta=1e-5) == pytest.approx(expected, rel=1e-9)
    assert epsilon_spent(5, population=100, per_round=10, noise_multiplier=2.0, delta=1e-5) < expected  # more noise, less spent
    assert epsilon_spent(0, population=100, per_round=10, noise_multiplier=1.0, delta=1e-5) == 0.0


def test_dp_refuses_methods_without_a_clipped_sum():
    with pytest.raises(ValueError, match="not 'flexlora'"):
        DPFedAvg(make_strategy("flexlora", seed=0), clip_norm=1.0, noise_multiplier=1.0, population=4, per_round=4)
    from fedlora.config import parse_config

    with pytest.raises(ConfigError, match="privacy.clip_norm"):
        parse_config({"strategy": {"name": "flexlora"}, "privacy": {"clip_norm": 1.0}})


def test_a_dp_run_logs_epsilon_every_round(data_file, tmp_path):  # noqa: F811
    cfg = tiny_config(data_file, run={"rounds": 2}, strategy={"name": "fedit"}, clients={"ranks": [], "rank_levels": [4]},
                      privacy={"clip_norm": 0.5, "noise_multiplier": 1.0})  # fmt: skip
    result = Engine(cfg, tmp_path).run()
    eps = [r["privacy/epsilon"] for r in result.records if r["type"] == "round"]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] < math.inf and result.summary["privacy/epsilon"] == eps[1]

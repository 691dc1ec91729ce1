"""FedPilot aggregation (fedlora.strategies.fedpilot): hand-computed per-module averages with the
staleness/coverage compensation, never-trained and rarely-trained modules, heterogeneous ranks,
payloads, importance and state. The registry-wide properties run in test_strategy_properties.py."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import save_load

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy
from fedlora.strategies.fedpilot import FedPilot, combine_factors, compensation

M1, M2, M3 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"
SHAPES = {M1: (3, 4), M2: (2, 4), M3: (4, 3)}  # (d_out, d_in)


def plan(cid: str, trained, rank: int = 2, alpha: float = 4.0) -> ClientPlan:
    """Adapters on all three modules (frozen where not trained), scale alpha / rank = 2."""
    return ClientPlan(cid, {m: rank for m in SHAPES}, {m: alpha for m in SHAPES}, frozenset(trained))


def factors(value: float, module: str, rank: int = 2, alpha: float = 4.0) -> LoraFactors:
    d_out, d_in = SHAPES[module]
    A = torch.full((rank, d_in), value) + torch.arange(rank * d_in, dtype=torch.float32).reshape(rank, d_in) / 10
    B = torch.full((d_out, rank), 2 * value) - torch.arange(d_out * rank, dtype=torch.float32).reshape(d_out, rank) / 7
    return LoraFactors(A, B, alpha)


def fedavg(terms):
    """Reference in float64: ``A = Σ w A``, ``B = Σ w s B`` (scale folded into B)."""
    A = sum(w * f.A.double() for f, w in terms)
    B = sum(w * f.scale * f.B.double() for f, w in terms)
    return A, B


def assert_global(strategy, module, A, B):
    g = strategy.global_adapter()[module]
    assert g.alpha == g.rank  # stored at scale 1
    torch.testing.assert_close(g.A.double(), A, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.B.double(), B, rtol=1e-6, atol=1e-6)


def test_compensation_formula():
    assert compensation(0, 1.0, 0.25, 1.5) == 1.0  # trained by everyone, last round too
    assert compensation(0, 0.75, 0.25, 1.5) == pytest.approx(1.0625)
    assert compensation(1, 0.25, 0.25, 1.5) == pytest.approx(1.4375)
    assert compensation(5, 0.0, 0.25, 1.5) == 1.5  # capped
    assert compensation(5, 0.0, 0.0, 1.5) == 1.0  # neutral


def test_hand_computed_three_rounds_with_rarely_and_never_trained_modules():
    # Prepare: c0 (n=1) and c1 (n=3); M3 is never trained
    s = FedPilot(seed=0, compensation=0.25, beta_max=1.5)
    # Round 1: both train M1, c0 also M2 -> plain per-module averages (no previous value)
    s.configure(1, [plan("c0", {M1, M2}), plan("c1", {M1})])
    a, b, c = factors(1.0, M1), factors(2.0, M1), factors(0.5, M2)
    r1 = s.aggregate(1, [Update("c0", {M1: a, M2: c, M3: factors(9.0, M3)}, 1), Update("c1", {M1: b}, 3)])
    A1, B1 = fedavg([(a, 0.25), (b, 0.75)])
    assert r1.accepted == ["c0", "c1"]
    assert_global(s, M1, A1, B1)
    assert_global(s, M2, *fedavg([(c, 1.0)]))
    assert M3 not in s.global_adapter()  # sent back frozen, never aggregated
    # Round 2: only c1 trains M2 (coverage 3/4, not skipped): beta = 1 + 0.25 * 0.25; M1 untouched
    s.configure(2, [plan("c0", set()), plan("c1", {M2})])
    d = factors(-1.0, M2)
    s.aggregate(2, [Update("c0", {}, 1), Update("c1", {M2: d}, 3)])
    old2 = fedavg([(c, 1.0)])
    beta = 1.0625
    A2 = (1 - beta) * old2[0] + beta * d.A.double()
    B2 = (1 - beta) * old2[1] + beta * d.scale * d.B.double()
    assert_global(s, M1, A1, B1)
    assert_global(s, M2, A2, B2)
    # Round 3: c0 trains M1 after it was skipped one round (coverage 1/4): beta = 1 + 0.25 * (1 + 0.75)
    s.configure(3, [plan("c0", {M1}), plan("c1", set())])
    e = factors(3.0, M1)
    r3 = s.aggregate(3, [Update("c0", {M1: e}, 1), Update("c1", {}, 3)])
    beta = 1.4375
    assert_global(s, M1, (1 - beta) * A1 + beta * e.A.double(), (1 - beta) * B1 + beta * e.scale * e.B.double())
    assert_global(s, M2, A2, B2)
    assert r3.metrics["fedpilot/modules_updated"] == 1 and r3.metrics["fedpilot/max_skipped_rounds"] == 1
    assert s.module_stats() == {M1: {"updates": 2, "last_round": 3}, M2: {"updates": 2, "last_round": 2}}


def test_neutral_compensation_returns_identical_updates_in_every_round():
    s = FedPilot(compensation=0.0)
    for rnd in (1, 2, 3):
        payloads = s.configure(rnd, [plan("c0", {M1}), plan("c1", {M1, M2})])
        f = factors(float(rnd), M1)
        s.aggregate(rnd, [Update("c0", {M1: f}, 2), Update("c1", {M1: f, M2: factors(1.0, M2)}, 5)])
        torch.testing.assert_close(lora_delta(s.global_adapter()[M1]), lora_delta(f))
    torch.testing.assert_close(lora_delta(payloads["c0"].init[M1]), lora_delta(factors(2.0, M1)))


def test_heterogeneous_ranks_use_the_factored_svd_at_the_largest_rank():
    # Prepare: ranks 1 and 3 on M1, so Σ p s B A has rank <= 4 and the global keeps 3 directions
    s = FedPilot()
    s.configure(1, [plan("lo", {M1}, rank=1, alpha=1.0), plan("hi", {M1}, rank=3, alpha=6.0)])
    lo, hi = factors(1.0, M1, rank=1, alpha=1.0), factors(-0.5, M1, rank=3, alpha=6.0)
    s.aggregate(1, [Update("lo", {M1: lo}, 1), Update("hi", {M1: hi}, 1)])
    dense = 0.5 * lora_delta(lo) + 0.5 * lora_delta(hi)
    U, S, Vh = torch.linalg.svd(dense)
    best3 = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    g = s.global_adapter()[M1]
    assert g.rank == 3
    torch.testing.assert_close(lora_delta(g), best3, rtol=1e-5, atol=1e-6)
    # Round 2 payload: the rank-1 client gets the best rank-1 approximation at its own scale
    init = s.configure(2, [plan("lo", {M1}, rank=1, alpha=1.0)])["lo"].init[M1]
    assert init.A.shape == (1, 4) and init.scale == 1.0
    torch.testing.assert_close(lora_delta(init), U[:, :1] @ torch.diag(S[:1]) @ Vh[:1], rtol=1e-5, atol=1e-6)


def test_frozen_modules_are_sent_with_their_global_value():
    s = FedPilot()
    s.configure(1, [plan("c0", {M1})])
    s.aggregate(1, [Update("c0", {M1: factors(1.0, M1)}, 4)])
    payload = s.configure(2, [plan("c1", {M2})])["c1"]
    assert set(payload.init) == {M1} and payload.plan.trainable == frozenset({M2})
    torch.testing.assert_close(lora_delta(payload.init[M1]), lora_delta(factors(1.0, M1)))


def test_global_importance_is_an_average_of_change_norms():
    s = FedPilot(importance_decay=0.5)
    s.configure(1, [plan("c0", {M1})])
    f1 = factors(1.0, M1)
    s.aggregate(1, [Update("c0", {M1: f1}, 1)])
    first = float(torch.linalg.matrix_norm(lora_delta(f1)))
    assert s.global_importance() == pytest.approx({M1: first})
    s.configure(2, [plan("c0", {M1})])
    f2 = factors(2.0, M1)
    s.aggregate(2, [Update("c0", {M1: f2}, 1)])
    second = float(torch.linalg.matrix_norm(lora_delta(f2) - lora_delta(f1)))
    assert s.global_importance()[M1] == pytest.approx(0.5 * first + 0.5 * second)


def test_combine_factors_with_a_negative_weight_matches_the_dense_sum():
    x, y = factors(1.0, M3, rank=2), factors(2.0, M3, rank=3, alpha=3.0)
    got = combine_factors([(x, 1.5), (y, -0.5)], rank_cap=5)
    torch.testing.assert_close(lora_delta(got), 1.5 * lora_delta(x) - 0.5 * lora_delta(y), rtol=1e-5, atol=1e-5)


def test_state_round_trip_continues_identically():
    s = FedPilot(compensation=0.5)
    s.configure(1, [plan("c0", {M1, M2}), plan("c1", {M1})])
    s.aggregate(1, [Update("c0", {M1: factors(1.0, M1), M2: factors(1.0, M2)}, 2), Update("c1", {M1: factors(0.0, M1)}, 1)])
    restored = FedPilot()
    restored.load_state_dict(save_load(s.state_dict()))
    for strategy in (s, restored):
        strategy.configure(2, [plan("c0", {M1})])
        strategy.aggregate(2, [Update("c0", {M1: factors(5.0, M1)}, 1)])
    torch.testing.assert_close(lora_delta(s.global_adapter()[M1]), lora_delta(restored.global_adapter()[M1]))
    assert s.global_importance() == restored.global_importance() and s.module_stats() == restored.module_stats()
    with pytest.raises(ValueError, match="cannot be loaded"):
        FedPilot().load_state_dict({**s.state_dict(), "name": "fedit"})


def test_registry_and_constructor_checks():
    assert isinstance(make_strategy("fedpilot", seed=3, compensation=0.5), FedPilot)
    with pytest.raises(ValueError, match="compensation must be"):
        FedPilot(compensation=-1.0)
    with pytest.raises(ValueError, match="beta_max must be >= 1"):
        FedPilot(beta_max=0.5)

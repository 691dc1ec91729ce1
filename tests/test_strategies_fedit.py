"""FedIT: FedAvg of A and B against an explicit-loop reference; homogeneous rank; round-1 init."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, rand_factors, save_load, simulate_client

from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta
from fedlora.strategies.fedit import FedIT


def test_round_one_every_client_gets_empty_init_and_the_same_seed():
    payloads = FedIT(seed=5).configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 2})])
    assert [p.init for p in payloads.values()] == [{}, {}]
    assert {p.seed for p in payloads.values()} == {5}
    assert all(p.train_A and p.train_B for p in payloads.values())


def test_hand_computed_fedavg():
    # Prepare: rank 1, scale 1 (alpha 1), 1 x 2 module; n = 1 and 3 -> p = 0.25, 0.75
    s = FedIT(shapes={Q: (1, 2)})
    s.configure(1, [make_plan("a", {Q: 1}, 1.0), make_plan("b", {Q: 1}, 1.0)])
    ups = [
        Update("a", {Q: LoraFactors(torch.tensor([[4.0, 0.0]]), torch.tensor([[8.0]]), 1.0)}, 1),
        Update("b", {Q: LoraFactors(torch.tensor([[0.0, 4.0]]), torch.tensor([[4.0]]), 1.0)}, 3),
    ]
    # Execute
    result = s.aggregate(1, ups)
    # Assert: A = [1, 3], B = [[2 + 3]] = [[5]]
    g = s.global_adapter()[Q]
    assert result.accepted == ["a", "b"] and result.rejected == {}
    assert torch.equal(g.A, torch.tensor([[1.0, 3.0]])) and torch.equal(g.B, torch.tensor([[5.0]])) and g.alpha == 1.0


def test_matches_explicit_fedavg_reference_and_returns_it_to_clients():
    # Prepare: same rank per module (2 on q, 4 on up), same alpha, three clients
    gen = torch.Generator().manual_seed(0)
    s = FedIT()
    plans = [make_plan(c, {Q: 2, UP: 4}) for c in ("a", "b", "c")]
    ups = [Update(c, {m: rand_factors(gen, *SHAPES[m], r, 2.0 * r) for m, r in plans[0].ranks.items()}, n) for c, n in zip("abc", (1, 2, 5))]
    s.configure(1, plans)
    # Execute
    s.aggregate(1, ups)
    payloads = s.configure(2, plans)
    # Assert: FedAvg of A and of B separately, each client's init = (ΣpA, ΣpB) at its alpha
    p = [1 / 8, 2 / 8, 5 / 8]
    for m in (Q, UP):
        A_ref = sum(w * u.factors[m].A for w, u in zip(p, ups))
        B_ref = sum(w * u.factors[m].B for w, u in zip(p, ups))
        init = payloads["b"].init[m]
        assert init.alpha == plans[1].alphas[m]
        torch.testing.assert_close(init.A, A_ref)
        torch.testing.assert_close(init.B, B_ref)


def test_mixed_alphas_combine_on_the_scale_aware_factors():
    gen = torch.Generator().manual_seed(1)
    s = FedIT()
    s.configure(1, [make_plan("a", {Q: 2}, 1.0), make_plan("b", {Q: 2}, 8.0)])
    fa, fb = rand_factors(gen, 12, 10, 2, 2.0), rand_factors(gen, 12, 10, 2, 16.0)
    s.aggregate(1, [Update("a", {Q: fa}, 1), Update("b", {Q: fb}, 1)])
    g = s.global_adapter()[Q]
    torch.testing.assert_close(g.B, 0.5 * (fa.B + 8.0 * fb.B))


def test_mixed_ranks_raise_with_remedy():
    with pytest.raises(ValueError, match=r"module .*q_proj.* has ranks \[2, 4\].*minimum rank \(2\).*flexlora"):
        FedIT().configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 4})])


def test_lower_rank_update_is_rejected_and_others_aggregated():
    gen = torch.Generator().manual_seed(2)
    s = FedIT()
    payloads = s.configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 2})])
    good = simulate_client(payloads["a"], gen, 3)
    low = Update("b", {Q: rand_factors(gen, 12, 10, 1, 4.0)}, 3)
    result = s.aggregate(1, [good, low])
    assert result.accepted == ["a"] and "rank 1" in result.rejected["b"]
    torch.testing.assert_close(lora_delta(s.global_adapter()[Q]), lora_delta(good.factors[Q]))


def test_state_dict_round_trip_keeps_seed_global_and_round_plans():
    gen = torch.Generator().manual_seed(3)
    s = FedIT(seed=4)
    plans = [make_plan("a", {Q: 2, UP: 3}), make_plan("b", {Q: 2, UP: 3})]
    s.aggregate(1, [simulate_client(p, gen, 2) for p in s.configure(1, plans).values()])
    updates2 = [simulate_client(p, gen, 2) for p in s.configure(2, plans).values()]
    restored = FedIT()
    restored.load_state_dict(save_load(s.state_dict()))
    s.aggregate(2, updates2)
    restored.aggregate(2, updates2)  # no configure: the round-2 plans came with the state
    assert restored.seed == 4
    for m in (Q, UP):
        assert torch.equal(s.global_adapter()[m].A, restored.global_adapter()[m].A)
        assert torch.equal(s.global_adapter()[m].B, restored.global_adapter()[m].B)


def test_loading_another_strategys_state_is_refused():
    with pytest.raises(ValueError, match="'flexlora' cannot be loaded into 'fedit'"):
        FedIT().load_state_dict({"name": "flexlora"})

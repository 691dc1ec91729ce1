"""FFA-LoRA: A frozen at a shared seed, only B averaged (exact), frozen-A and rank checks."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, rel_err, simulate_client

from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, lora_delta, weighted_delta
from fedlora.strategies.ffa import FFALoRA


def test_payloads_freeze_A_with_one_seed_for_every_client_and_round():
    s = FFALoRA(seed=11)
    plans = [make_plan("a", {Q: 2}), make_plan("b", {Q: 2})]
    first = s.configure(1, plans)
    s.aggregate(1, [simulate_client(p, torch.Generator().manual_seed(0), 1) for p in first.values()])
    second = s.configure(2, plans)
    assert all(not p.train_A and p.train_B and p.seed == 11 for p in (*first.values(), *second.values()))
    assert first["a"].init == {}
    assert torch.equal(second["a"].init[Q].A, init_lora_factors(12, 10, 2, 1.0, 11, Q).A)


def test_only_B_is_averaged_and_the_average_is_exact():
    # Prepare: mixed alphas, homogeneous ranks per module
    gen = torch.Generator().manual_seed(1)
    s = FFALoRA(seed=2)
    plans = [make_plan("a", {Q: 2, UP: 3}, 1.0), make_plan("b", {Q: 2, UP: 3}, 4.0), make_plan("c", {Q: 2, UP: 3}, 0.5)]
    payloads = s.configure(1, plans)
    ups = [simulate_client(payloads[p.client_id], gen, n) for p, n in zip(plans, (1, 2, 1))]
    # Execute
    s.aggregate(1, ups)
    # Assert
    for m in (Q, UP):
        g, frozen = s.global_adapter()[m], init_lora_factors(*SHAPES[m], plans[0].ranks[m], 1.0, 2, m).A
        assert torch.equal(g.A, frozen)
        torch.testing.assert_close(g.B, sum(w * u.factors[m].scale * u.factors[m].B for w, u in zip((0.25, 0.5, 0.25), ups)))
        assert rel_err(lora_delta(g), weighted_delta([u.factors[m] for u in ups], [0.25, 0.5, 0.25])) < 1e-6


def test_update_with_a_changed_A_is_rejected():
    gen = torch.Generator().manual_seed(3)
    s = FFALoRA()
    payloads = s.configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 2})])
    good = simulate_client(payloads["a"], gen, 1)
    f = simulate_client(payloads["b"], gen, 1).factors[Q]
    moved = Update("b", {Q: LoraFactors(f.A + 0.01, f.B, f.alpha)}, 1)
    result = s.aggregate(1, [good, moved])
    assert result.accepted == ["a"] and "differs from the frozen A" in result.rejected["b"]


def test_mixed_ranks_raise_with_remedy():
    with pytest.raises(ValueError, match=r"FFA-LoRA needs one LoRA rank.*ranks \[2, 4\]"):
        FFALoRA().configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 4})])

"""SLoRA: the sparse stage's shared rows and exact average, and LoRA initialised from the SVD of its
accumulated update, against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import ideal_average, Q, SHAPES, UP, make_plan, simulate_client

from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy

RANKS = {Q: 2, UP: 3}


def _round(s, server_round: int, seed: int, n: int = 3):
    plans = [make_plan(f"c{k}", RANKS) for k in range(n)]
    payloads = s.configure(server_round, plans)
    gen = torch.Generator().manual_seed(seed)
    return payloads, [simulate_client(payloads[p.client_id], gen, 2 + 3 * k) for k, p in enumerate(plans)]


_ideal = ideal_average


def test_sparse_stage_trains_shared_rows_and_accumulates_the_exact_average():
    s = make_strategy("slora", seed=0, sparse_rounds=2, density=0.25, shapes=SHAPES)
    p1, u1 = _round(s, 1, seed=1)
    # every client gets the same rows of each weight: a frozen one-hot B, A at zero, k = density · d_out rows
    for m, (d_out, d_in) in SHAPES.items():
        k = round(0.25 * d_out)
        starts = [p1[c].init[m] for c in p1]
        assert all(torch.equal(st.B, starts[0].B) for st in starts) and not p1["c0"].train_B
        assert starts[0].B.shape == (d_out, k) and torch.equal(starts[0].B.sum(0), torch.ones(k)) and starts[0].B.sum(1).max() == 1
        assert torch.count_nonzero(starts[0].A) == 0 and p1["c0"].plan.ranks[m] == k
    assert p1["c0"].base_delta is None
    s.aggregate(1, u1)
    # round 2: new rows, and round 1's update merged into the base
    p2, u2 = _round(s, 2, seed=2)
    assert not torch.equal(p2["c0"].init[Q].B, p1["c0"].init[Q].B)
    for m in SHAPES:
        torch.testing.assert_close(lora_delta(p2["c0"].base_delta[m]), _ideal(u1, m), rtol=1e-6, atol=1e-7)
        # only the chosen rows of ΔW change
        changed = (lora_delta(u1[0].factors[m]).abs().sum(1) > 0).sum()
        assert changed <= round(0.25 * SHAPES[m][0])
    s.aggregate(2, u2)
    # end of stage 1: LoRA at the planned rank is the best rank-r part of Σ_t ΔW_t, split by sqrt(S)
    for m, r in RANKS.items():
        acc = _ideal(u1, m) + _ideal(u2, m)
        U, S, Vh = torch.linalg.svd(acc)
        best = (U[:, :r] * S[:r]) @ Vh[:r]
        g = s.global_adapter()[m]
        assert g.rank == r
        torch.testing.assert_close(lora_delta(g), best, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.linalg.norm(g.A, dim=1), torch.linalg.norm(g.B, dim=0), rtol=1e-5, atol=1e-6)


def test_lora_stage_starts_from_the_svd_on_the_original_base_and_averages_as_fedit():
    s, fedit = make_strategy("slora", seed=0, sparse_rounds=1, density=0.5, shapes=SHAPES), make_strategy("fedit", seed=0)
    _, u1 = _round(s, 1, seed=3)
    s.aggregate(1, u1)
    p2, u2 = _round(s, 2, seed=4)
    assert p2["c0"].base_delta is None and p2["c0"].train_A and p2["c0"].train_B
    for m, r in RANKS.items():
        assert p2["c1"].init[m].rank == r
        torch.testing.assert_close(lora_delta(p2["c1"].init[m]), lora_delta(s.global_adapter()[m]), rtol=1e-5, atol=1e-6)
    s.aggregate(2, u2)
    fedit.configure(1, [make_plan(f"c{k}", RANKS) for k in range(3)])
    fedit.aggregate(1, u2)
    for m in RANKS:
        torch.testing.assert_close(lora_delta(s.global_adapter()[m]), lora_delta(fedit.global_adapter()[m]), rtol=1e-6, atol=1e-7)


def test_sparse_stage_rejects_a_client_that_moved_the_row_selector_and_needs_shapes():
    s = make_strategy("slora", seed=0, sparse_rounds=1, shapes=SHAPES)
    _, updates = _round(s, 1, seed=5)
    updates[0].factors[Q].B[0, 0] += 1.0
    result = s.aggregate(1, updates)
    assert result.accepted == ["c1", "c2"] and "frozen B" in result.rejected["c0"]
    with pytest.raises(ValueError, match="shapes="):
        make_strategy("slora", seed=0).configure(1, [make_plan("c0", RANKS)])
    with pytest.raises(ValueError, match="density"):
        make_strategy("slora", density=0.0)

"""FlexLoRA against a dense reference: ΔW = Σ p_k s_k B_k A_k, then torch.linalg.svd, rank-r_k truncation."""

from __future__ import annotations

import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, rand_factors, rel_err

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, lora_delta, weighted_delta
from fedlora.strategies.flexlora import FlexLoRA


def _best_rank(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_hand_computed_two_orthogonal_clients():
    # Prepare: ΔW_a = 4 e1 e1ᵀ (n=3), ΔW_b = 4 e2 e2ᵀ (n=1) -> ΔW = diag(3, 1) on a 2 x 2 module
    s = FlexLoRA()
    s.configure(1, [ClientPlan("a", {Q: 1}, {Q: 2.0}), ClientPlan("b", {Q: 1}, {Q: 2.0})])
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ups = [Update("a", {Q: LoraFactors(e1, 2 * e1.T, 2.0)}, 3), Update("b", {Q: LoraFactors(e2, 2 * e2.T, 2.0)}, 1)]
    # Execute
    s.aggregate(1, ups)
    payloads = s.configure(2, [ClientPlan("a", {Q: 1}, {Q: 1.0}), ClientPlan("b", {Q: 2}, {Q: 4.0})])
    # Assert: rank-1 client gets the top direction 3 e1 e1ᵀ, rank-2 client gets all of diag(3, 1)
    torch.testing.assert_close(lora_delta(payloads["a"].init[Q]), torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(lora_delta(payloads["b"].init[Q]), torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(payloads["b"].init[Q].B.abs(), torch.tensor([[1.5, 0.0], [0.0, 0.5]]))  # U S / s_j, s_j = 2


def test_clients_get_the_best_rank_r_approximation_of_the_dense_weighted_sum():
    # Prepare: per-module mixed ranks and mixed alphas across 4 clients
    gen = torch.Generator().manual_seed(0)
    ranks = [{Q: 1, UP: 6}, {Q: 3, UP: 2}, {Q: 4, UP: 5}, {Q: 2, UP: 1}]
    alphas = [1.0, 8.0, 2.0, 32.0]
    plans = [ClientPlan(f"c{k}", r, {m: alphas[k] for m in r}) for k, r in enumerate(ranks)]
    ups = [Update(p.client_id, {m: rand_factors(gen, *SHAPES[m], r, p.alphas[m]) for m, r in p.ranks.items()}, n) for p, n in zip(plans, (5, 1, 3, 2))]
    s = FlexLoRA()
    s.configure(1, plans)
    # Execute
    result = s.aggregate(1, ups)
    payloads = s.configure(2, plans)
    # Assert
    p = [5 / 11, 1 / 11, 3 / 11, 2 / 11]
    for m in (Q, UP):
        dense = weighted_delta([u.factors[m] for u in ups], p)
        assert rel_err(lora_delta(s.global_adapter()[m]), dense) < 1e-5
        for plan in plans:
            f, r = payloads[plan.client_id].init[m], plan.ranks[m]
            assert f.A.shape == (r, SHAPES[m][1]) and f.B.shape == (SHAPES[m][0], r) and f.alpha == plan.alphas[m]
            assert rel_err(lora_delta(f), _best_rank(dense, r)) < 1e-5
    assert result.metrics["max_stacked_rank"] == 14.0


def test_global_rank_is_the_stacked_rank_capped_at_min_d():
    gen = torch.Generator().manual_seed(1)
    s = FlexLoRA()
    plans = [make_plan("a", {Q: 4, UP: 6}), make_plan("b", {Q: 3, UP: 6})]
    s.configure(1, plans)
    s.aggregate(1, [Update(p.client_id, {m: rand_factors(gen, *SHAPES[m], r, 2.0 * r) for m, r in p.ranks.items()}, 1) for p in plans])
    g = s.global_adapter()
    assert g[Q].rank == 7 and g[Q].alpha == 7.0  # factored path, R = 7 < 10
    assert g[UP].rank == 10 and g[UP].A.shape == (10, 10)  # R = 12 >= min(16, 10): dense fallback, K = 10


def test_client_above_the_global_rank_gets_fresh_trainable_rows():
    # Prepare: round 1 only a rank-1 client; round 2 a rank-3 client
    gen = torch.Generator().manual_seed(2)
    s = FlexLoRA(seed=7)
    s.configure(1, [make_plan("a", {Q: 1})])
    u = Update("a", {Q: rand_factors(gen, 12, 10, 1, 2.0)}, 1)
    s.aggregate(1, [u])
    # Execute
    f = s.configure(2, [make_plan("b", {Q: 3})])["b"].init[Q]
    # Assert: same product, A rows 1..2 from the shared fresh init, B columns zero
    assert f.A.shape == (3, 10) and f.B.shape == (12, 3)
    torch.testing.assert_close(lora_delta(f), lora_delta(u.factors[Q]))
    assert torch.equal(f.A[1:], init_lora_factors(12, 10, 3, 1.0, 7, Q).A[1:]) and torch.all(f.B[:, 1:] == 0)


def test_round_one_clients_share_the_fresh_A_prefix():
    payloads = FlexLoRA(seed=3).configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 5})])
    assert [p.init for p in payloads.values()] == [{}, {}] and {p.seed for p in payloads.values()} == {3}
    small, large = (init_lora_factors(12, 10, r, 1.0, 3, Q).A for r in (2, 5))
    assert torch.equal(small, large[:2])


def test_untrained_module_keeps_its_value():
    gen = torch.Generator().manual_seed(4)
    s = FlexLoRA()
    s.configure(1, [make_plan("a", {Q: 2, UP: 2})])
    s.aggregate(1, [Update("a", {m: rand_factors(gen, *SHAPES[m], 2, 4.0) for m in (Q, UP)}, 1)])
    before = s.global_adapter()[UP]
    s.configure(2, [make_plan("a", {Q: 2})])
    s.aggregate(2, [Update("a", {Q: rand_factors(gen, 12, 10, 2, 4.0)}, 1)])
    assert s.global_adapter()[UP] is before

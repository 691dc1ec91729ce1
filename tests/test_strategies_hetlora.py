"""HetLoRA: zero-padding, norm weights, per-client truncation, tail-norm penalty and self-pruning."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, rand_factors

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta, truncate_rank
from fedlora.strategies.hetlora import HetLoRA, prune_rank, tail_norm_penalty


def test_hand_computed_padding_and_norm_weights():
    # Prepare: a: rank 1, ΔW_a = 1·[[1],[0]]@[[3, 0]] (norm 3); b: rank 2, scale 1, ΔW_b norm 1
    s = HetLoRA()
    s.configure(1, [ClientPlan("a", {Q: 1}, {Q: 1.0}), ClientPlan("b", {Q: 2}, {Q: 2.0})])
    fa = LoraFactors(torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0], [0.0]]), 1.0)
    fb = LoraFactors(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]]), 2.0)
    # Execute: n_k must not matter (paper: weights by norm only)
    result = s.aggregate(1, [Update("a", {Q: fa}, 1), Update("b", {Q: fb}, 100)])
    # Assert: w = (3/4, 1/4); A = 3/4 [[3,0],[0,0]] + 1/4 A_b; B likewise; global at r_max = 2, scale 1
    g = s.global_adapter()[Q]
    assert g.A.shape == (2, 2) and g.B.shape == (2, 2) and g.alpha == 2.0
    torch.testing.assert_close(g.A, torch.tensor([[2.25, 0.25], [0.25, 0.0]]))
    torch.testing.assert_close(g.B, torch.tensor([[0.75, 0.0], [0.0, 0.25]]))
    assert result.metrics[f"max_weight/{Q}"] == pytest.approx(0.75)


def test_matches_explicit_loop_reference_with_mixed_ranks_and_alphas():
    # Prepare
    gen = torch.Generator().manual_seed(0)
    ranks = [{Q: 1, UP: 4}, {Q: 3, UP: 2}, {Q: 2, UP: 3}]
    plans = [ClientPlan(f"c{k}", r, {m: a for m in r}) for k, (r, a) in enumerate(zip(ranks, (2.0, 16.0, 1.0)))]
    ups = [Update(p.client_id, {m: rand_factors(gen, *SHAPES[m], r, p.alphas[m]) for m, r in p.ranks.items()}, 1) for p in plans]
    s = HetLoRA()
    s.configure(1, plans)
    # Execute
    s.aggregate(1, ups)
    payloads = s.configure(2, plans)
    # Assert: reference with explicit loops over clients and rank indices
    for m in (Q, UP):
        r_max = max(p.ranks[m] for p in plans)
        norms = [float(torch.linalg.matrix_norm(lora_delta(u.factors[m]))) for u in ups]
        A_ref, B_ref = torch.zeros(r_max, SHAPES[m][1]), torch.zeros(SHAPES[m][0], r_max)
        for u, nrm in zip(ups, norms):
            f = u.factors[m]
            for i in range(f.rank):
                A_ref[i] += nrm / sum(norms) * f.A[i]
                B_ref[:, i] += nrm / sum(norms) * f.scale * f.B[:, i]
        g = s.global_adapter()[m]
        torch.testing.assert_close(g.A, A_ref)
        torch.testing.assert_close(g.B, B_ref)
        for p in plans:
            init, r = payloads[p.client_id].init[m], p.ranks[m]
            assert init.A.shape == (r, SHAPES[m][1]) and init.B.shape == (SHAPES[m][0], r) and init.alpha == p.alphas[m]
            torch.testing.assert_close(init.A, A_ref[:r])
            torch.testing.assert_close(init.B, B_ref[:, :r] / init.scale)


def test_zero_norms_fall_back_to_example_weights():
    s = HetLoRA()
    s.configure(1, [make_plan("a", {Q: 1}), make_plan("b", {Q: 1})])
    zero = lambda a: LoraFactors(torch.full((1, 10), a), torch.zeros(12, 1), 2.0)  # noqa: E731
    s.aggregate(1, [Update("a", {Q: zero(1.0)}, 1), Update("b", {Q: zero(5.0)}, 3)])
    torch.testing.assert_close(s.global_adapter()[Q].A, torch.full((1, 10), 4.0))


def test_payload_options_carry_the_client_side_settings():
    p = HetLoRA(gamma=0.9, regularization=0.01, prune=False).configure(1, [make_plan("a", {Q: 2})])["a"]
    assert p.options == {"hetlora_gamma": 0.9, "hetlora_lambda": 0.01, "hetlora_prune": False}


def test_tail_norm_penalty_hand_computed():
    # r = 4, γ = 0.5 -> tail = rows/cols 2..3
    A = torch.tensor([[9.0], [9.0], [3.0], [4.0]])
    B = torch.tensor([[9.0, 9.0, 1.0, 0.0], [9.0, 9.0, 0.0, 1.0]])
    assert float(tail_norm_penalty(A, B, 0.5)) == pytest.approx(5.0 * 2**0.5)


def test_tail_norm_penalty_is_differentiable():
    A = torch.randn(8, 5, requires_grad=True)
    B = torch.randn(6, 8, requires_grad=True)
    tail_norm_penalty(A, B, 0.99).backward()
    assert torch.all(A.grad[:7] == 0) and torch.any(A.grad[7] != 0) and torch.any(B.grad[:, 7] != 0)


def test_prune_rank_drops_the_tail_only_below_threshold():
    A, B = torch.ones(10, 3), torch.ones(4, 10)  # γ = 0.8: tail = 2 rows -> ||B_t|| ||A_t|| = √8 √6
    tail = (8 * 6) ** 0.5
    assert prune_rank(A, B, 0.8, threshold=tail + 1e-3) == 8
    assert prune_rank(A, B, 0.8, threshold=tail - 1e-3) == 10
    assert prune_rank(torch.ones(1, 3), torch.ones(4, 1), 0.5, threshold=1e9) == 1


@pytest.mark.parametrize("gamma", [0.0, 1.5])
def test_bad_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        HetLoRA(gamma=gamma)


def test_self_pruned_rank_is_kept_in_later_rounds_at_the_same_scale():
    # Prepare: client a planned at rank 4 sends rank 3 (pruned, scale kept)
    gen = torch.Generator().manual_seed(1)
    s = HetLoRA()
    plan = make_plan("a", {Q: 4})  # alpha 8, scale 2
    s.configure(1, [plan])
    pruned = truncate_rank(rand_factors(gen, 12, 10, 4, 8.0), 3)
    s.aggregate(1, [Update("a", {Q: pruned}, 1)])
    # Execute
    p2 = s.configure(2, [plan])["a"]
    # Assert: rank 3, alpha 6 (scale 2), init holds the pruned update; global keeps r_max = 4
    assert p2.plan.ranks[Q] == 3 and p2.plan.alphas[Q] == 6.0 and p2.init[Q].A.shape == (3, 10)
    torch.testing.assert_close(lora_delta(p2.init[Q]), lora_delta(pruned))
    assert s.global_adapter()[Q].rank == 4
    too_big = Update("a", {Q: rand_factors(gen, 12, 10, 4, 8.0)}, 1)
    assert "rank 4 but the plan allows rank in [1, 3]" in s.aggregate(2, [too_big]).rejected["a"]

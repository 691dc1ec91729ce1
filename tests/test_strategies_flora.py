"""FLoRA: the stacked product equals Σ p_k s_k B_k A_k exactly; cumulative merge; exact re-compression."""

from __future__ import annotations

import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, rand_factors, rel_err

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta, weighted_delta
from fedlora.strategies.flora import FLoRA, stack_factors


def _round(s: FLoRA, server_round: int, plans, gen, counts):
    s.configure(server_round, plans)
    ups = [Update(p.client_id, {m: rand_factors(gen, *SHAPES[m], r, p.alphas[m]) for m, r in p.ranks.items()}, n) for p, n in zip(plans, counts)]
    s.aggregate(server_round, ups)
    return ups


def test_hand_computed_stacking_folds_the_scale_and_weights_A():
    # a: rank 1, alpha 4 (s = 4), n = 1; b: rank 1, alpha 1 (s = 1), n = 3
    fa = LoraFactors(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0]]), 4.0)
    fb = LoraFactors(torch.tensor([[0.0, 2.0]]), torch.tensor([[3.0]]), 1.0)
    st = stack_factors([fa, fb], [0.25, 0.75])
    assert torch.equal(st.B, torch.tensor([[4.0, 3.0]])) and torch.equal(st.A, torch.tensor([[0.25, 0.0], [0.0, 1.5]]))
    assert st.alpha == 2.0 and st.scale == 1.0  # alpha = stacked rank: the reference code keeps alpha_k here
    torch.testing.assert_close(lora_delta(st), torch.tensor([[1.0, 4.5]], dtype=torch.float64))


def test_stacked_product_equals_the_weighted_sum_with_mixed_ranks_and_alphas():
    # Prepare
    gen = torch.Generator().manual_seed(0)
    plans = [ClientPlan(f"c{k}", r, {m: a for m in r}) for k, (r, a) in enumerate(zip([{Q: 1, UP: 5}, {Q: 4, UP: 2}, {Q: 2, UP: 1}], (16.0, 1.0, 4.0)))]
    s = FLoRA()
    # Execute
    ups = _round(s, 1, plans, gen, (2, 1, 5))
    # Assert
    p = [2 / 8, 1 / 8, 5 / 8]
    for m in (Q, UP):
        g = s.global_adapter()[m]
        assert g.rank == sum(pl.ranks[m] for pl in plans) and g.scale == 1.0
        assert rel_err(lora_delta(g), weighted_delta([u.factors[m] for u in ups], p)) < 1e-6


def test_every_round_starts_fresh_on_top_of_the_cumulative_merged_update():
    # Prepare
    gen = torch.Generator().manual_seed(1)
    plans = [make_plan("a", {Q: 2}), make_plan("b", {Q: 3})]
    s = FLoRA(seed=3)
    first = s.configure(1, plans)
    ups1 = _round(s, 1, plans, gen, (1, 1))
    # Execute
    second = s.configure(2, plans)
    # Assert
    assert all(p.init == {} and p.base_delta is None and p.base_delta_version == 0 for p in first.values())
    assert first["a"].seed == first["b"].seed != second["a"].seed == second["b"].seed
    assert second["a"].base_delta_version == 1 and second["a"].base_delta is second["b"].base_delta
    torch.testing.assert_close(lora_delta(second["a"].base_delta[Q]), weighted_delta([u.factors[Q] for u in ups1], [0.5, 0.5]))


def test_cumulative_update_is_exact_across_rounds_and_recompressed_at_min_d():
    # Prepare: q_proj is 12 x 10; two clients of rank 4 per round -> 8, then 16 > 10 -> SVD to rank 10
    gen = torch.Generator().manual_seed(2)
    plans = [make_plan("a", {Q: 4}), make_plan("b", {Q: 4})]
    s = FLoRA()
    # Execute
    ups = [_round(s, t, plans, gen, (1, 3)) for t in (1, 2, 3)]
    # Assert
    expected = sum(weighted_delta([u.factors[Q] for u in r], [0.25, 0.75]) for r in ups)
    g = s.global_adapter()[Q]
    assert g.rank == 10 and g.alpha == 10.0
    assert rel_err(lora_delta(g), expected) < 1e-6


def test_version_only_changes_when_the_merged_update_does():
    gen = torch.Generator().manual_seed(3)
    s = FLoRA()
    _round(s, 1, [make_plan("a", {Q: 2})], gen, (1,))
    s.configure(2, [make_plan("a", {Q: 2})])
    result = s.aggregate(2, [Update("a", {Q: rand_factors(gen, 12, 10, 5, 1.0)}, 1)])
    assert result.accepted == [] and s.configure(3, [make_plan("a", {Q: 2})])["a"].base_delta_version == 1

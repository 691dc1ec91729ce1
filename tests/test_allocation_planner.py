"""Plans from FlexLoRA ranks and from Fed-pilot's knapsack (fedlora.allocation.planner), and the
plan report (table and heat map)."""

from __future__ import annotations

import pytest

from test_memory_model import llama_spec, name

from fedlora.allocation import (
    BudgetTooSmallError,
    MemoryModel,
    fedpilot_selections,
    plan_fedpilot,
    plan_flexlora,
    plan_heatmap,
    plan_table,
    training_counts,
)

MM = {"batch_size": 2, "seq_len": 8}


def test_flexlora_plans_every_module_at_the_clients_rank():
    spec = llama_spec(hidden=8, inter=16)
    plans = plan_flexlora(spec, ["a", "b"], [2, 30], alpha_ratio=2.0, target_kinds=["q_proj", "down_proj"])
    assert set(plans[0].ranks) == {name(0, "q_proj"), name(1, "q_proj"), name(0, "down_proj"), name(1, "down_proj")}
    assert set(plans[0].ranks.values()) == {2} and plans[0].alphas[name(0, "q_proj")] == 4.0
    assert plans[1].ranks[name(0, "q_proj")] == 8  # clamped to min(d_in, d_out)
    assert plans[0].trainable is None


def test_flexlora_errors():
    spec = llama_spec()
    with pytest.raises(ValueError, match="2 client ids but 1 ranks"):
        plan_flexlora(spec, ["a", "b"], [4])
    with pytest.raises(ValueError, match=r"target_kinds \['qkv'\]"):
        plan_flexlora(spec, ["a"], [4], target_kinds=["qkv"])


def _values(spec):
    return {m.name: 1.0 + m.layer for m in spec.modules}  # deeper modules are worth more


def test_fedpilot_plans_train_what_fits_and_carry_frozen_adapters():
    # Prepare: three clients with growing budgets
    spec = llama_spec(layers=4, hidden=16, inter=32, vocab=50, params=10_000)
    mm = MemoryModel(spec, **MM)
    frozen = {m: 4 for m in spec.module_names}
    budgets = [mm.minimum_bytes(4) + mm.fixed_bytes(frozen) - mm.fixed_bytes(), mm.peak_bytes({name(2, "q_proj"): 4}, frozen=frozen),
               int(1.02 * mm.peak_bytes({m: 4 for m in spec.module_names}, frozen=frozen))]  # fmt: skip (2 %: rounding slack)
    # Execute
    selections = fedpilot_selections(spec, ["a", "b", "c"], budgets, _values(spec), MM, rank=4)
    plans = plan_fedpilot(spec, ["a", "b", "c"], budgets, _values(spec), MM, rank=4, alpha_ratio=2.0)
    # Assert
    assert [len(p.trainable) for p in plans] == [1, len(selections[1].modules), len(spec.modules)]
    assert all(set(p.ranks) == set(spec.module_names) and p.trainable <= set(p.ranks) for p in plans)
    assert all(s.predicted_bytes <= b for s, b in zip(selections, budgets))
    assert selections[0].value < selections[1].value < selections[2].value
    assert plans[2].alphas[name(0, "q_proj")] == 8.0


def test_fedpilot_without_frozen_adapters_and_per_client_values():
    spec = llama_spec(layers=2)
    values = [{name(0, "q_proj"): 1.0}, {name(1, "up_proj"): 1.0}]
    plans = plan_fedpilot(spec, ["a", "b"], [10**8, 10**8], values, MM, rank=2, frozen_adapters=False)
    assert [dict(p.ranks) for p in plans] == [{name(0, "q_proj"): 2}, {name(1, "up_proj"): 2}]


def test_fedpilot_budget_error_names_the_client():
    spec = llama_spec(params=10**6)
    with pytest.raises(BudgetTooSmallError, match=r"client 'poor': memory budget 1000 B"):
        plan_fedpilot(spec, ["rich", "poor"], [10**9, 1000], _values(spec), MM)
    with pytest.raises(ValueError, match="2 client ids but 1 budgets"):
        plan_fedpilot(spec, ["a", "b"], [10**9], _values(spec), MM)


def test_report_table_and_heatmap(tmp_path):
    spec = llama_spec(layers=3)
    plans = plan_fedpilot(spec, ["a", "b"], [10**9, 10**9], _values(spec), MM, rank=2)
    plans[0] = type(plans[0])("a", plans[0].ranks, plans[0].alphas, frozenset({name(2, "q_proj")}))
    text = plan_table(plans, [2**20, 3 * 2**20], [2 * 2**20, 4 * 2**20], [1.5, 2.0], spec=spec, text=True)
    assert "1.0 MiB" in text and "50%" in text and "1/21" in text and "21/21" in text and "0-2" in text
    kinds, counts = training_counts(plans, spec)
    assert kinds[0] == "q_proj" and counts[2][0] == 2 and counts[0][0] == 1
    png = plan_heatmap(plans, spec, tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="budgets has 1 entries for 2 plans"):
        plan_table(plans, budgets=[1])

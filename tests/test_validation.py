"""fedlora.lora.validation: one test per problem, each checking the error names client, module and remedy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.validation import InvalidUpdateError, validate_update

Q, V = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"
SHAPES = {Q: (6, 5), V: (6, 5)}
PLAN = ClientPlan("c1", {Q: 4, V: 2}, {Q: 8.0, V: 4.0})


def _factors(rank: int, d_out: int = 6, d_in: int = 5, dtype=torch.float32, alpha: float = 8.0) -> LoraFactors:
    return LoraFactors(torch.ones(rank, d_in, dtype=dtype), torch.ones(d_out, rank, dtype=dtype), alpha)


def _update(**changes) -> Update:
    factors = {Q: _factors(4), V: _factors(2, alpha=4.0)}
    factors.update(changes.pop("factors", {}))
    return dataclasses.replace(Update("c1", factors, 10), **changes)


def _raises(update: Update, match: str, module: str | None = None, **kwargs) -> InvalidUpdateError:
    with pytest.raises(InvalidUpdateError, match=match) as info:
        validate_update(update, PLAN, expected_shapes=SHAPES, **kwargs)
    err = info.value
    assert err.client_id == "c1" and err.module == module and err.remedy
    assert "c1" in str(err) and err.problem in str(err) and err.remedy in str(err)
    return err


def test_valid_update_passes():
    validate_update(_update(), PLAN, expected_shapes=SHAPES)


def test_numpy_integer_example_count_is_accepted():
    validate_update(_update(num_examples=np.int64(3)), PLAN, expected_shapes=SHAPES)


def test_invalid_update_error_is_a_value_error_with_attributes():
    err = InvalidUpdateError("c9", "m", "rank 9 above 4", "train at the planned rank")
    assert isinstance(err, ValueError)
    assert str(err) == "client 'c9', module 'm': rank 9 above 4. train at the planned rank"


def test_plan_of_another_client():
    with pytest.raises(InvalidUpdateError, match="plan of client 'c2'"):
        validate_update(_update(), ClientPlan("c2", {Q: 4}, {Q: 8.0}))


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_num_examples_must_be_a_positive_int(n):
    _raises(_update(num_examples=n), "num_examples must be a positive int")


def test_unknown_module():
    _raises(_update(factors={"model.layers.0.mlp.up_proj": _factors(2)}), "not in the client's plan", "model.layers.0.mlp.up_proj")


def test_missing_trainable_module():
    _raises(Update("c1", {Q: _factors(4)}, 10), "trainable module missing", V)


def test_frozen_module_may_be_left_out():
    plan = ClientPlan("c1", {Q: 4, V: 2}, {Q: 8.0, V: 4.0}, trainable=frozenset({Q}))
    validate_update(Update("c1", {Q: _factors(4)}, 10), plan, expected_shapes=SHAPES)


def test_not_lora_factors():
    _raises(_update(factors={Q: (torch.ones(4, 5), torch.ones(6, 4))}), "expected LoraFactors", Q)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
def test_non_floating_dtype(dtype):
    _raises(_update(factors={Q: _factors(4, dtype=dtype)}), "not a real floating point", Q)


def test_half_precision_is_accepted():
    validate_update(_update(factors={Q: _factors(4, dtype=torch.bfloat16)}), PLAN, expected_shapes=SHAPES)


def test_wrong_number_of_dimensions():
    bad = LoraFactors(torch.ones(4, 5, 1), torch.ones(6, 4), 8.0)
    _raises(_update(factors={Q: bad}), "3 dimensions", Q)


def test_rank_of_A_and_B_disagree():
    bad = LoraFactors(torch.ones(4, 5), torch.ones(6, 3), 8.0)
    _raises(_update(factors={Q: bad}), "A has 4 rows but B has 3 columns", Q)


def test_rank_above_plan():
    _raises(_update(factors={V: _factors(3, alpha=4.0)}), r"rank 3 but the plan allows rank in \[1, 2\]", V)


def test_rank_below_plan_is_allowed_unless_exact_rank():
    lower = _update(factors={Q: _factors(3, alpha=6.0)})  # pruned: the plan's scale 8 / 4 kept
    validate_update(lower, PLAN, expected_shapes=SHAPES)
    _raises(lower, "rank 3 but the plan allows rank == 4", Q, exact_rank=True)


def test_zero_rank():
    _raises(_update(factors={Q: _factors(0)}), "rank 0", Q)


def test_wrong_d_in():
    _raises(_update(factors={Q: _factors(4, d_in=7)}), r"\(d_out, d_in\) = \(6, 7\), expected \(6, 5\)", Q)


def test_wrong_d_out():
    _raises(_update(factors={Q: _factors(4, d_out=3)}), r"\(d_out, d_in\) = \(3, 5\)", Q)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    _raises(_update(factors={Q: _factors(4, alpha=alpha)}), "alpha must be a positive finite number", Q)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(value):
    f = _factors(4)
    f.B[2, 1] = value
    _raises(_update(factors={Q: f}), "B has 1 NaN/Inf values", Q)


def test_frozen_A_changed():
    expected = {Q: torch.ones(4, 5), V: torch.ones(2, 5)}
    moved = LoraFactors(torch.ones(4, 5) + 1e-3, torch.ones(6, 4), 8.0)
    _raises(_update(factors={Q: moved}), "A differs from the frozen A", Q, train_A=False, expected_A=expected)


def test_frozen_A_within_rounding_of_the_update_dtype_is_accepted():
    expected = {Q: torch.full((4, 5), 1 / 3), V: torch.ones(2, 5)}
    f = LoraFactors(torch.full((4, 5), 1 / 3).to(torch.bfloat16), torch.ones(6, 4), 8.0)
    validate_update(_update(factors={Q: f}), PLAN, expected_shapes=SHAPES, train_A=False, expected_A=expected)


def test_alpha_must_keep_the_plans_scale():
    _raises(_update(factors={Q: _factors(4, alpha=1e300), V: _factors(2, alpha=4.0)}), "differs from the plan", Q)
    _raises(_update(factors={Q: _factors(3, alpha=8.0), V: _factors(2, alpha=4.0)}), "differs from the plan", Q)


def test_num_examples_must_be_a_reasonable_int():
    _raises(_update(num_examples=10**400), "an int of 401 digits", None)
    _raises(_update(num_examples=2.5), "positive int", None)

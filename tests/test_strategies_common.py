"""Shared strategy helpers (``fedlora.strategies._common``) and the builders other strategy tests import.

The builders simulate clients with random tensors: no model, milliseconds per test.
"""

from __future__ import annotations

import io
from typing import Mapping

import pytest
import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, lora_delta
from fedlora.modelspec import ModelSpec, ModuleSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload

# Two modules with different shapes, so per-module ranks and shapes are exercised everywhere.
Q, UP = "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"
SHAPES = {Q: (12, 10), UP: (16, 10)}


def rand_factors(gen: torch.Generator, d_out: int, d_in: int, rank: int, alpha: float) -> LoraFactors:
    """Random non-zero factors ``A [rank, d_in]``, ``B [d_out, rank]``."""
    return LoraFactors(torch.randn(rank, d_in, generator=gen), torch.randn(d_out, rank, generator=gen), float(alpha))


def make_plan(cid: str, ranks: Mapping[str, int], alpha_per_rank: float = 2.0) -> ClientPlan:
    """A plan with ``alpha = alpha_per_rank · r`` per module (scale ``alpha_per_rank``)."""
    return ClientPlan(cid, dict(ranks), {m: alpha_per_rank * r for m, r in ranks.items()})


def simulate_client(payload: Payload, gen: torch.Generator, n: int, shapes: Mapping[str, tuple[int, int]] = SHAPES) -> Update:
    """What a trainer would send: start from ``init`` (or the seeded fresh init), move the trained factors."""
    factors = {}
    for m, r in payload.plan.ranks.items():
        start = payload.init.get(m) or init_lora_factors(*shapes[m], r, payload.plan.alphas[m], payload.seed, m)
        A = start.A + (0.1 * torch.randn(start.A.shape, generator=gen) if payload.train_A else 0.0)
        B = start.B + (torch.randn(start.B.shape, generator=gen) if payload.train_B else 0.0)
        factors[m] = LoraFactors(A, B, float(payload.plan.alphas[m]))
    return Update(payload.plan.client_id, factors, n)


def dense(adapter: Adapter, module: str) -> torch.Tensor:
    """Float64 ``s · B @ A`` of one module of an adapter."""
    return lora_delta(adapter[module])


def ideal_average(updates, module: str) -> torch.Tensor:
    """The exact average ``Σ p_k s_k B_k A_k`` of one module, ``p_k = n_k / Σ n_j``, dense float64."""
    total = sum(u.num_examples for u in updates)
    return sum(u.num_examples / total * lora_delta(u.factors[module]) for u in updates)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x.double() - ref.double()) / torch.linalg.matrix_norm(ref.double()))


def save_load(state: dict) -> dict:
    """Round-trip a state dict through ``torch.save``/``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_round_book_rejects_duplicate_client_ids():
    # Prepare
    plans = [make_plan("a", {Q: 2}), make_plan("a", {Q: 2})]
    # Execute / Assert
    with pytest.raises(ValueError, match="more than once"):
        C.RoundBook().start(1, plans, "X")


def test_round_book_requires_configure_of_the_same_round():
    book = C.RoundBook()
    with pytest.raises(ValueError, match="before any configure"):
        book.check_round(1, "X")
    book.start(1, [make_plan("a", {Q: 2})], "X")
    with pytest.raises(ValueError, match="last configure was for round 1"):
        book.check_round(2, "X")


def test_round_book_state_round_trip():
    book = C.RoundBook()
    book.start(3, [make_plan("a", {Q: 2, UP: 4}), ClientPlan("b", {Q: 1}, {Q: 8.0}, frozenset())], "X")
    restored = C.RoundBook.from_state(save_load(book.to_state()))
    assert restored == book


def test_round_shapes_uses_majority_independent_of_order():
    # Prepare: two clients say (12, 10), one says (12, 9)
    gen = torch.Generator().manual_seed(0)
    ups = [Update(c, {Q: rand_factors(gen, 12, d_in, 2, 4.0)}, 1) for c, d_in in (("a", 9), ("b", 10), ("c", 10))]
    # Execute
    forward, backward = C.round_shapes({}, ups), C.round_shapes({}, ups[::-1])
    # Assert
    assert forward == backward == {Q: (12, 10)}
    assert C.round_shapes({Q: (12, 9)}, ups) == {Q: (12, 9)}  # known shapes win


def test_normalize_shapes_from_model_spec():
    spec = ModelSpec((ModuleSpec(Q, 10, 12, 0, "q_proj"),), 1, 10, 20, 2, 2, 100, 1000)
    assert C.normalize_shapes(spec) == {Q: (12, 10)}


def test_homogeneous_ranks_error_names_module_ranks_and_remedy():
    plans = [make_plan("a", {Q: 4}), make_plan("b", {Q: 8})]
    with pytest.raises(ValueError, match=r"ranks \[4, 8\].*minimum rank \(4\).*flexlora"):
        C.homogeneous_ranks(plans, {}, "FedIT")


def test_homogeneous_ranks_checks_against_global_state():
    with pytest.raises(ValueError, match=r"ranks \[2, 4\]"):
        C.homogeneous_ranks([make_plan("a", {Q: 4})], {Q: 2}, "FedIT")


def test_derive_seed_is_stable():
    assert C.derive_seed(0, "flora", 1) == C.derive_seed(0, "flora", 1) != C.derive_seed(0, "flora", 2)

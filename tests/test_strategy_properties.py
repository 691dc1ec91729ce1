"""Properties every registered strategy must have (DESIGN.md section 5), run over the registry.

Identical updates come back unchanged; a single client gets its own update back; client order does
not matter; state_dict round-trips; bad updates are rejected without stopping the others.
"""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, SHAPES, UP, make_plan, save_load, simulate_client

from fedlora.lora.factors import Update
from fedlora.lora.linalg import lora_delta
from fedlora.strategies import STRATEGY_NAMES, Strategy, make_strategy


def _new(name: str) -> Strategy:
    try:
        return make_strategy(name, seed=0, shapes=SHAPES)
    except ImportError as err:
        pytest.skip(f"{name} not available: {err}")


def _ranks(strategy: Strategy, k: int) -> dict[str, int]:
    """Mixed ranks per client where the method allows them, else one rank per module."""
    if getattr(strategy, "heterogeneous_ranks", False):
        return {Q: 1 + k, UP: 4 - k}
    return {Q: 2, UP: 3}


def _models(strategy: Strategy) -> list[dict]:
    """The models a strategy hands its clients: each client's own (personalised methods, local-only),
    else its global one."""
    personal = getattr(strategy, "personal_adapters", None)
    if personal is not None:
        return [a for _, a in personal()]
    per_client = getattr(strategy, "evaluation_adapters", None)
    return list(per_client().values()) if per_client else [strategy.global_adapter()]


def _model_deltas(strategy: Strategy) -> list[dict[str, torch.Tensor]]:
    return [{m: lora_delta(f) for m, f in adapter.items()} for adapter in _models(strategy)]


def _assert_state_equal(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _round(strategy: Strategy, server_round: int, n_clients: int, gen: torch.Generator):
    plans = [make_plan(f"c{k}", _ranks(strategy, k)) for k in range(n_clients)]
    payloads = strategy.configure(server_round, plans)
    return plans, payloads, [simulate_client(payloads[p.client_id], gen, 1 + 3 * k) for k, p in enumerate(plans)]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_is_a_strategy_and_payloads_carry_each_clients_plan(name):
    s = _new(name)
    plans = [make_plan(f"c{k}", _ranks(s, k)) for k in range(3)]
    payloads = s.configure(1, plans)
    assert isinstance(s, Strategy) and s.name == name
    assert sorted(payloads) == ["c0", "c1", "c2"]
    for p in plans:  # each client's own modules (FedRA: a subset) at its own ranks (SLoRA's sparse stage: its row count)
        sent = payloads[p.client_id].plan
        assert sent.client_id == p.client_id and set(sent.ranks) <= set(p.ranks)
        if name != "slora":
            assert all(sent.ranks[m] == p.ranks[m] for m in sent.ranks)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_identical_updates_come_back_unchanged(name):
    # Prepare: three clients send the same factors with different example counts
    s = _new(name)
    plans = [make_plan(f"c{k}", {Q: 2, UP: 3}) for k in range(3)]
    payloads = s.configure(1, plans)
    one = simulate_client(payloads["c0"], torch.Generator().manual_seed(0), 1)
    # Execute
    result = s.aggregate(1, [Update(f"c{k}", one.factors, 1 + 5 * k) for k in range(3)])
    nxt = s.configure(2, plans)
    # Assert: the global update equals the client's, and round 2 hands it back
    assert result.accepted == ["c0", "c1", "c2"]
    for m, f in one.factors.items():
        for deltas in _model_deltas(s):
            torch.testing.assert_close(deltas[m], lora_delta(f), rtol=1e-5, atol=1e-6)
        start = nxt["c1"].init.get(m) or (nxt["c1"].base_delta or {}).get(m)
        torch.testing.assert_close(lora_delta(start), lora_delta(f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_single_client_gets_its_own_update_back(name):
    s = _new(name)
    payloads = s.configure(1, [make_plan("solo", _ranks(s, 0))])
    update = simulate_client(payloads["solo"], torch.Generator().manual_seed(1), 7)
    s.aggregate(1, [update])
    (deltas,) = _model_deltas(s)
    for m, f in update.factors.items():
        torch.testing.assert_close(deltas[m], lora_delta(f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_client_order_does_not_matter(name):
    forward, backward = _new(name), _new(name)
    _, _, updates = _round(forward, 1, 3, torch.Generator().manual_seed(2))
    _round(backward, 1, 3, torch.Generator().manual_seed(2))
    forward.aggregate(1, updates)
    backward.aggregate(1, updates[::-1])
    for a, b in zip(_models(forward), _models(backward), strict=True):
        assert a.keys() == b.keys()
        for m in a:
            torch.testing.assert_close(lora_delta(a[m]), lora_delta(b[m]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_state_dict_round_trips_mid_round(name):
    # Prepare: one full round, then configure round 2 and checkpoint before its aggregation
    gen = torch.Generator().manual_seed(3)
    s = _new(name)
    _, _, updates = _round(s, 1, 3, gen)
    s.aggregate(1, updates)
    _, _, updates2 = _round(s, 2, 3, gen)
    # Execute
    restored = _new(name)
    restored.load_state_dict(save_load(s.state_dict()))
    # Assert: same state, and round 2 aggregates identically without another configure
    _assert_state_equal(s.state_dict(), restored.state_dict())
    s.aggregate(2, updates2)
    restored.aggregate(2, updates2)
    _assert_state_equal(s.state_dict(), restored.state_dict())


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_rejected_update_does_not_stop_the_others(name):
    # Prepare: c1 sends NaN; the reference strategy only ever sees c0 and c2
    s, ref = _new(name), _new(name)
    _, _, updates = _round(s, 1, 3, torch.Generator().manual_seed(4))
    _round(ref, 1, 3, torch.Generator().manual_seed(4))
    bad = updates[1].factors[Q]
    bad.B[0, 0] = float("nan")
    # Execute
    result = s.aggregate(1, updates)
    ref.aggregate(1, [updates[0], updates[2]])
    # Assert
    assert result.accepted == ["c0", "c2"] and "NaN" in result.rejected["c1"]
    for got, want in zip(_model_deltas(s), _model_deltas(ref), strict=True):
        for m, d in want.items():
            torch.testing.assert_close(got[m], d)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_no_valid_update_leaves_the_global_state_unchanged(name):
    gen = torch.Generator().manual_seed(5)
    s = _new(name)
    _, _, updates = _round(s, 1, 2, gen)
    s.aggregate(1, updates)
    before = [{m: (f.A.clone(), f.B.clone(), f.alpha) for m, f in a.items()} for a in _models(s)]
    _, _, updates2 = _round(s, 2, 2, gen)
    stranger = Update("stranger", updates2[0].factors, 3)
    result = s.aggregate(2, [stranger, Update("c0", updates2[0].factors, 0)])
    after = [{m: (f.A, f.B, f.alpha) for m, f in a.items()} for a in _models(s)]
    assert result.accepted == [] and "not configured in round 2" in result.rejected["stranger"]
    assert "num_examples" in result.rejected["c0"]
    _assert_state_equal(before, after)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_aggregate_before_configure_is_a_clear_error(name):
    with pytest.raises(ValueError, match="configure"):
        _new(name).aggregate(1, [])

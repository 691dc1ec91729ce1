"""FedEx-LoRA, RoLoRA and FedSVD against dense references computed by hand (float64).

Each method claims the global update equals the average of the clients' own updates
``Σ_k p_k s_k B_k A_k``; these tests check that claim directly, over two rounds and mixed ranks
where the method supports them, plus the frozen-factor checks that keep the claim honest.
"""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import Q, UP, SHAPES, dense, make_plan, rel_err, simulate_client

from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy


def _ideal(updates: list[Update], module: str) -> torch.Tensor:
    """Σ p_k s_k B_k A_k with p_k = n_k / Σ n_j, dense float64."""
    total = sum(u.num_examples for u in updates)
    return sum(u.num_examples / total * lora_delta(u.factors[module]) for u in updates)


def _round(s, server_round: int, ranks: list[dict[str, int]], seed: int):
    plans = [make_plan(f"c{k}", r) for k, r in enumerate(ranks)]
    payloads = s.configure(server_round, plans)
    gen = torch.Generator().manual_seed(seed)
    updates = [simulate_client(payloads[p.client_id], gen, 2 + 3 * k) for k, p in enumerate(plans)]
    return payloads, updates


# ----------------------------------------------------------------------------- FedEx-LoRA


def test_fedex_global_update_is_exact_over_two_rounds():
    s = make_strategy("fedex", seed=0)
    _, u1 = _round(s, 1, [{Q: 2, UP: 3}] * 3, seed=1)
    s.aggregate(1, u1)
    for m in (Q, UP):
        # Assert: FedAvg of the factors, by hand, and the exact total
        p = torch.tensor([u.num_examples for u in u1], dtype=torch.float64)
        p = p / p.sum()
        A_bar = sum(w * u.factors[m].A.double() for w, u in zip(p, u1))
        B_bar = sum(w * u.factors[m].scale * u.factors[m].B.double() for w, u in zip(p, u1))
        payload = s.configure(2, [make_plan("c0", {Q: 2, UP: 3})])["c0"]
        assert rel_err(lora_delta(payload.init[m]), B_bar @ A_bar) < 1e-6
        assert rel_err(lora_delta(payload.base_delta[m]), _ideal(u1, m) - B_bar @ A_bar) < 1e-6
        assert rel_err(dense(s.global_adapter(), m), _ideal(u1, m)) < 1e-6
    residual_1 = {m: _ideal(u1, m) - dense(s.configure(2, [make_plan("c0", {Q: 2, UP: 3})])["c0"].init, m) for m in (Q, UP)}
    # round 2 starts from (Ā, B̄) on the base carrying the residual; the total stays exact
    _, u2 = _round(s, 2, [{Q: 2, UP: 3}] * 3, seed=2)
    s.aggregate(2, u2)
    for m in (Q, UP):
        assert rel_err(dense(s.global_adapter(), m), residual_1[m] + _ideal(u2, m)) < 1e-6


def test_fedex_refuses_mixed_ranks_with_the_remedy():
    with pytest.raises(ValueError, match="minimum rank"):
        make_strategy("fedex").configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 4})])


# ----------------------------------------------------------------------------- RoLoRA


def test_rolora_alternates_and_is_exact_with_mixed_ranks():
    s = make_strategy("rolora", seed=0)
    ranks = [{Q: 2, UP: 4}, {Q: 4, UP: 1}, {Q: 3, UP: 2}]
    payloads, u1 = _round(s, 1, ranks, seed=3)
    assert all(not p.train_A and p.train_B for p in payloads.values())
    s.aggregate(1, u1)
    for m in (Q, UP):
        assert rel_err(dense(s.global_adapter(), m), _ideal(u1, m)) < 1e-6
    payloads, u2 = _round(s, 2, ranks, seed=4)
    assert all(p.train_A and not p.train_B for p in payloads.values())
    result = s.aggregate(2, u2)
    assert result.accepted == ["c0", "c1", "c2"]
    for m in (Q, UP):
        assert rel_err(dense(s.global_adapter(), m), _ideal(u2, m)) < 1e-6


def test_rolora_rejects_a_client_that_moved_the_frozen_factor():
    s = make_strategy("rolora", seed=0)
    _, u1 = _round(s, 1, [{Q: 2, UP: 2}] * 2, seed=5)
    s.aggregate(1, u1)
    _, u2 = _round(s, 2, [{Q: 2, UP: 2}] * 2, seed=6)
    f = u2[1].factors[Q]
    u2[1].factors[Q] = LoraFactors(f.A, f.B + 0.5, f.alpha)  # B is frozen in even rounds
    result = s.aggregate(2, u2)
    assert result.accepted == ["c0"] and "B differs from the frozen B" in result.rejected["c1"]


# ----------------------------------------------------------------------------- FedSVD


def test_fedsvd_refactors_the_exact_average_with_orthonormal_A():
    s = make_strategy("fedsvd", seed=0)
    ranks = [{Q: 2, UP: 3}, {Q: 4, UP: 1}]
    payloads, u1 = _round(s, 1, ranks, seed=7)
    assert all(not p.train_A and p.train_B for p in payloads.values())
    s.aggregate(1, u1)
    g = s.global_adapter()
    for m in (Q, UP):
        assert rel_err(dense(g, m), _ideal(u1, m)) < 1e-6
        A = g[m].A.double()
        torch.testing.assert_close(A @ A.T, torch.eye(A.shape[0], dtype=torch.float64), atol=1e-6, rtol=0)
        norms = torch.linalg.vector_norm(g[m].B.double(), dim=0)  # = singular values, sorted
        assert torch.all(norms[:-1] >= norms[1:] - 1e-6)
    # a rank-2 client receives the best rank-2 approximation (dense SVD reference)
    head = s.configure(2, [make_plan("small", {Q: 2, UP: 2})])["small"].init[Q]
    U, S, Vh = torch.linalg.svd(_ideal(u1, Q))
    assert rel_err(lora_delta(head), (U[:, :2] * S[:2]) @ Vh[:2]) < 1e-6


def test_fedsvd_rejects_a_client_that_trained_A():
    s = make_strategy("fedsvd", seed=0)
    _, updates = _round(s, 1, [{Q: 2, UP: 2}] * 2, seed=8)
    f = updates[0].factors[UP]
    updates[0].factors[UP] = LoraFactors(f.A * 1.01, f.B, f.alpha)
    result = s.aggregate(1, updates)
    assert result.accepted == ["c1"] and "A differs from the frozen A" in result.rejected["c0"]


# ----------------------------------------------------------------------------- FedProx


def test_fedprox_adds_the_proximal_option_to_its_base_method():
    s = make_strategy("fedprox", seed=0, mu=0.1, base="flexlora")
    payloads = s.configure(1, [make_plan("a", {Q: 2}), make_plan("b", {Q: 4})])  # mixed ranks: FlexLoRA allows them
    assert s.heterogeneous_ranks and all(p.options["proximal_mu"] == 0.1 for p in payloads.values())
    assert not make_strategy("fedprox", seed=0).heterogeneous_ranks  # default base FedIT
    with pytest.raises(ValueError, match="mu must be a number >= 0"):
        make_strategy("fedprox", mu=-1)
    with pytest.raises(ValueError, match="base must be a federated server rule"):
        make_strategy("fedprox", base="local")


def test_fedprox_state_refuses_another_base():
    a = make_strategy("fedprox", seed=0, base="flexlora")
    b = make_strategy("fedprox", seed=0, base="fedit")
    with pytest.raises(ValueError, match="base='flexlora'"):
        b.load_state_dict(a.state_dict())


# ----------------------------------------------------------------------------- FedSA-LoRA


def test_fedsa_shares_A_and_keeps_each_clients_B(tmp_path):
    s = make_strategy("fedsa", seed=0)
    ranks = [{Q: 2, UP: 3}, {Q: 4, UP: 3}]
    _, u1 = _round(s, 1, ranks, seed=9)
    s.aggregate(1, u1)
    p = [u.num_examples / sum(v.num_examples for v in u1) for u in u1]
    # row i of Ā averages the clients that have row i: rows 2-3 of Q come from the rank-4 client alone
    A_q = s.global_adapter()[Q].A.double()
    torch.testing.assert_close(A_q[:2], p[0] * u1[0].factors[Q].A.double()[:2] + p[1] * u1[1].factors[Q].A.double()[:2])
    torch.testing.assert_close(A_q[2:], u1[1].factors[Q].A.double()[2:])
    # round 2: each client gets Ā[:r_k] with its own B back (same scale)
    nxt = s.configure(2, [make_plan("c0", ranks[0]), make_plan("c1", ranks[1])])
    for k, cid in enumerate(("c0", "c1")):
        for m in (Q, UP):
            got, own = nxt[cid].init[m], u1[k].factors[m]
            torch.testing.assert_close(got.A.double(), A_q[: own.rank] if m == Q else s.global_adapter()[UP].A.double()[: own.rank])
            torch.testing.assert_close(got.scale * got.B, own.scale * own.B)
    personal = dict(s.personal_adapters())
    assert sorted(personal) == ["c0", "c1"]
    torch.testing.assert_close(lora_delta(personal["c1"][Q]), lora_delta(LoraFactors(A_q[:4].float(), u1[1].factors[Q].B, u1[1].factors[Q].alpha)))


def test_fedsa_personal_state_lives_on_disk_and_resumes(tmp_path):
    s = make_strategy("fedsa", seed=0)
    s.attach_client_store(tmp_path / "state", keep=2)
    for rnd in (1, 2, 3):
        _, updates = _round(s, rnd, [{Q: 2, UP: 2}] * 3, seed=10 + rnd)
        s.aggregate(rnd, updates)
    assert sorted(p.name for p in (tmp_path / "state" / "c1").iterdir()) == ["v2.pt", "v3.pt"]  # newest `keep` versions
    state = s.state_dict()
    assert "memory" not in state["personal"] and state["personal"]["index"] == {"c0": 3, "c1": 3, "c2": 3}
    restored = make_strategy("fedsa", seed=0)
    restored.attach_client_store(tmp_path / "state", keep=2)
    restored.load_state_dict(state)
    a = s.configure(4, [make_plan("c1", {Q: 2, UP: 2})])["c1"].init
    b = restored.configure(4, [make_plan("c1", {Q: 2, UP: 2})])["c1"].init
    for m in (Q, UP):
        assert torch.equal(a[m].A, b[m].A) and torch.equal(a[m].B, b[m].B)


# ----------------------------------------------------------------------------- FedDPA


def test_feddpa_averages_the_global_part_and_keeps_each_personal_part():
    s = make_strategy("feddpa", seed=0, global_rank=2)
    ranks = [{Q: 3, UP: 2}, {Q: 5, UP: 4}]
    _, u1 = _round(s, 1, ranks, seed=20)
    s.aggregate(1, u1)
    p = [u.num_examples / sum(v.num_examples for v in u1) for u in u1]
    for m in (Q, UP):
        # the global adapter: FedAvg of the first g = 2 components, scale folded into B
        A_g = sum(w * u.factors[m].A.double()[:2] for w, u in zip(p, u1))
        B_g = sum(w * u.factors[m].scale * u.factors[m].B.double()[:, :2] for w, u in zip(p, u1))
        assert rel_err(dense(s.global_adapter(), m), B_g @ A_g) < 1e-6
    # each client's model: the global part plus its own personal components, exactly
    personal = dict(s.personal_adapters())
    for k, cid in enumerate(("c0", "c1")):
        for m in (Q, UP):
            f = u1[k].factors[m]
            own = f.scale * f.B.double()[:, 2:] @ f.A.double()[2:]
            assert rel_err(dense(personal[cid], m), dense(s.global_adapter(), m) + own) < 1e-6
    # round 2 hands each client [global; personal] at its own rank
    nxt = s.configure(2, [make_plan("c1", ranks[1])])["c1"].init
    assert rel_err(lora_delta(nxt[Q]), dense(personal["c1"], Q)) < 1e-6
    with pytest.raises(ValueError, match="below the global adapter's rank 2"):
        s.configure(3, [make_plan("tiny", {Q: 1, UP: 2})])


# ----------------------------------------------------------------------------- FedRA


def test_fedra_allocates_random_layers_per_round_and_averages_per_module():
    from fedlora.allocation.plan import ClientPlan

    modules = [f"model.layers.{i}.self_attn.q_proj" for i in range(6)]
    plans = [ClientPlan.uniform(f"c{k}", modules, rank=2, alpha=4.0) for k in range(3)]
    s = make_strategy("fedra", seed=0, layer_fraction=0.5, fractions={"c2": 1 / 6})
    p1 = s.configure(1, plans)
    assert [len(p1[c].options["submodel_layers"]) for c in ("c0", "c1", "c2")] == [3, 3, 1]
    for cid, payload in p1.items():
        assert sorted({int(m.split(".")[2]) for m in payload.plan.ranks}) == payload.options["submodel_layers"]
    again = make_strategy("fedra", seed=0, layer_fraction=0.5, fractions={"c2": 1 / 6}).configure(1, plans)
    assert all(again[c].options == p1[c].options for c in p1)  # seeded
    assert any(s.allocate(2, p) != s.allocate(1, p) for p in plans)  # re-drawn every round
    gen = torch.Generator().manual_seed(30)
    shapes = {m: (12, 10) for m in modules}
    updates = [simulate_client(p1[c], gen, 2 + k, shapes) for k, c in enumerate(("c0", "c1", "c2"))]
    s.aggregate(1, updates)
    g = s.global_adapter()
    for m in modules:  # each module: FedAvg over exactly the clients that trained it
        trained = [u for u in updates if m in u.factors]
        if not trained:
            assert m not in g
            continue
        total = sum(u.num_examples for u in trained)
        A = sum(u.num_examples / total * u.factors[m].A.double() for u in trained)
        B = sum(u.num_examples / total * u.factors[m].scale * u.factors[m].B.double() for u in trained)
        assert rel_err(dense(g, m), B @ A) < 1e-6

"""FedRot-LoRA: the client's orthogonal Procrustes alignment (against hand-built rotations and a
brute-force search) and the server's alternation of the aligning factor."""

from __future__ import annotations

import math

import pytest
import torch

from test_strategies_common import Q, UP, make_plan, simulate_client

from fedlora.client.rules import RotationAlignment, client_rules, procrustes_rotation
from fedlora.lora.factors import LoraFactors
from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy
from fedlora.strategies.fedrot import aligning_factor


def _orthogonal(r: int, seed: int) -> torch.Tensor:
    Q_, _ = torch.linalg.qr(torch.randn(r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q_


@pytest.mark.parametrize("factor", ["A", "B"])
def test_alignment_undoes_a_rotation_of_the_rank_space(factor):
    # a client whose factors are the reference in rotated coordinates: (B0 Q)(Qᵀ A0)
    gen = torch.Generator().manual_seed(0)
    A0, B0 = torch.randn(4, 9, generator=gen, dtype=torch.float64), torch.randn(7, 4, generator=gen, dtype=torch.float64)
    Qr = _orthogonal(4, 1)
    trained = {Q: LoraFactors(Qr.T @ A0, B0 @ Qr, 8.0)}
    out = RotationAlignment(factor, 1.0).finish(trained, {Q: LoraFactors(A0, B0, 8.0)})[Q]
    torch.testing.assert_close(out.A, A0, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.B, B0, rtol=1e-9, atol=1e-10)


def test_procrustes_beats_every_other_orthogonal_matrix_and_keeps_the_update():
    gen = torch.Generator().manual_seed(2)
    A, A0 = torch.randn(3, 8, generator=gen, dtype=torch.float64), torch.randn(3, 8, generator=gen, dtype=torch.float64)
    R = procrustes_rotation(A @ A0.T)
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    best = float(torch.linalg.norm(R.T @ A - A0))
    for seed in range(200):  # brute force over random orthogonal matrices (rotations and reflections)
        assert best <= float(torch.linalg.norm(_orthogonal(3, 100 + seed).T @ A - A0)) + 1e-12
    f = LoraFactors(A.float(), torch.randn(5, 3, generator=gen), 6.0)
    out = RotationAlignment("A", 1.0).finish({Q: f}, {Q: LoraFactors(A0.float(), torch.zeros(5, 3), 6.0)})[Q]
    torch.testing.assert_close(lora_delta(out), lora_delta(f), rtol=1e-5, atol=1e-6)


def test_soft_alignment_is_a_rotation_between_identity_and_the_full_one():
    M = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full, soft = procrustes_rotation(M, 1.0), procrustes_rotation(M, 0.3)
    torch.testing.assert_close(soft.T @ soft, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.linalg.det(soft) > 0
    eye = torch.eye(4, dtype=torch.float64)
    if torch.linalg.det(full) > 0:
        assert torch.linalg.norm(soft - eye) < torch.linalg.norm(full - eye)
    with pytest.raises(ValueError, match="rotation_align"):
        RotationAlignment("C", 1.0)


def test_fedrot_alternates_the_aligning_factor_and_averages_as_fedit():
    assert [aligning_factor(t) for t in range(1, 6)] == [None, "A", "B", "A", "B"]
    s, fedit = make_strategy("fedrot", seed=0, strength=0.5), make_strategy("fedit", seed=0)
    plans = [make_plan(f"c{k}", {Q: 2, UP: 3}) for k in range(3)]
    p1 = s.configure(1, plans)
    assert "rotation_align" not in p1["c0"].options
    gen = torch.Generator().manual_seed(4)
    updates = [simulate_client(p1[p.client_id], gen, 2 + k) for k, p in enumerate(plans)]
    s.aggregate(1, updates)
    p2 = s.configure(2, plans)
    assert p2["c1"].options == {"rotation_align": "A", "rotation_strength": 0.5}
    assert [r.__class__ for r in client_rules(p2["c1"].options)] == [RotationAlignment]
    fedit.configure(1, plans)
    fedit.aggregate(1, updates)
    for m in (Q, UP):
        assert math.isclose(float(torch.linalg.norm(lora_delta(s.global_adapter()[m]) - lora_delta(fedit.global_adapter()[m]))), 0.0, abs_tol=1e-9)


def test_trainer_sends_the_rotated_factors_of_the_same_update():
    from fedlora.allocation.plan import ClientPlan
    from fedlora.client.trainer import LocalTrainer, TrainConfig
    from fedlora.data.example import Example
    from fedlora.strategies.base import Payload
    from fedlora.testing import tiny_llama

    model, tok = tiny_llama()
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=3, batch_size=2, lr=1e-2))
    data = [Example("Name the colour.", f"item {i}", ["red", "green", "blue"][i % 3], "colours") for i in range(6)]
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    plan = ClientPlan("c", dict.fromkeys(modules, 3), dict.fromkeys(modules, 6.0))
    plain = trainer.train(Payload(plan), data, client_seed=5)
    rotated = trainer.train(Payload(plan, options={"rotation_align": "A"}), data, client_seed=5)
    for m in modules:
        assert not torch.allclose(rotated.factors[m].A, plain.factors[m].A)
        torch.testing.assert_close(lora_delta(rotated.factors[m]), lora_delta(plain.factors[m]), rtol=1e-5, atol=1e-7)

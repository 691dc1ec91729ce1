"""Lockstep training: several clients in one batched pass equal the same clients trained one after
another (different ranks, modules, alphas, frozen factors and rules), and the engine uses it."""

from __future__ import annotations

import pytest
import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.client.lockstep import lockstep_unsupported
from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.data.example import Example
from fedlora.strategies.base import Payload
from fedlora.testing import tiny_llama

Q0, V0, Q1, D1 = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                  "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj")


def _data(offset: int, n: int) -> list[Example]:
    colours = ["red", "green", "blue", "yellow"]
    return [Example("Name the colour of the item.", f"item {offset + i} " + "x " * (i % 3), colours[(offset + i) % 4], "colours") for i in range(n)]


def _jobs():
    plans = [ClientPlan("a", {Q0: 2, V0: 4, D1: 3}, {Q0: 4.0, V0: 8.0, D1: 3.0}),
             ClientPlan("b", {Q0: 5, Q1: 1}, {Q0: 10.0, Q1: 2.0}, frozenset({Q1})),
             ClientPlan("c", {V0: 3, Q1: 2, D1: 2}, {V0: 6.0, Q1: 4.0, D1: 4.0})]  # fmt: skip
    payloads = [Payload(plans[0], seed=1), Payload(plans[1], seed=2, train_A=False, options={"proximal_mu": 0.1}),
                Payload(plans[2], seed=3, options={"hetlora_lambda": 1e-2, "hetlora_gamma": 0.5})]
    return [(payloads[0], _data(0, 6), 11), (payloads[1], _data(10, 3), 12), (payloads[2], _data(20, 5), 13)]


def test_lockstep_equals_sequential_training():
    model, tok = tiny_llama()
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=4, batch_size=2, lr=1e-2))
    jobs = _jobs()
    sequential = [trainer.train(p, ex, client_seed=seed) for p, ex, seed in jobs]
    together = trainer.train_lockstep(jobs)
    for s, t in zip(sequential, together):
        assert s.client_id == t.client_id and sorted(s.factors) == sorted(t.factors) and s.num_examples == t.num_examples
        for m in s.factors:
            torch.testing.assert_close(t.factors[m].A, s.factors[m].A, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(t.factors[m].B, s.factors[m].B, rtol=1e-4, atol=1e-6)
            assert t.factors[m].alpha == s.factors[m].alpha
        assert t.metrics["train_loss"] == pytest.approx(s.metrics["train_loss"], rel=1e-5)
        if "train_penalty" in s.metrics:
            assert t.metrics["train_penalty"] == pytest.approx(s.metrics["train_penalty"], rel=1e-4)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(type(m).__name__ != "_Routed" for m in model.modules())


def test_cases_lockstep_does_not_cover_are_named():
    model, tok = tiny_llama()
    jobs = _jobs()
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=2, batch_size=2, dropout=0.1))
    assert "dropout" in lockstep_unsupported(trainer, [p for p, _, _ in jobs])
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=2, batch_size=2))
    jobs[0][0].options = {"submodel_layers": [0]}
    with pytest.raises(ValueError, match="FedRA"):
        trainer.train_lockstep(jobs)
    assert lockstep_unsupported(trainer, [jobs[1][0]]) == "fewer than two clients"


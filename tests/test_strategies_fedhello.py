"""Fed-HeLLo (FIM-HLA): the client's Fisher-score choice of layers, and the server's per-module average."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import dense, make_plan, rel_err

from fedlora.allocation.plan import ClientPlan
from fedlora.client.importance import module_importance
from fedlora.client.rules import FisherLayerSelection, client_rules
from fedlora.client.trainer import LocalTrainer, TrainConfig, batch_schedule
from fedlora.data.example import Example
from fedlora.data.formatting import collate, encode_example
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors
from fedlora.strategies import make_strategy
from fedlora.strategies.base import Payload
from fedlora.testing import tiny_llama

DATA = [Example("Name the colour.", f"item {i}", ["red", "green", "blue"][i % 3], "colours") for i in range(6)]


def _layer_modules(layers: range, kinds=("self_attn.q_proj", "mlp.down_proj")) -> list[str]:
    return [f"model.layers.{i}.{k}" for i in layers for k in kinds]


def test_selection_keeps_the_top_fisher_layers_and_modules_outside_layers():
    modules = frozenset(_layer_modules(range(4)) + ["lm_head"])
    fisher = {f"model.layers.{i}.self_attn.q_proj": v for i, v in enumerate([1.0, 5.0, 0.5, 2.0])}
    fisher |= {f"model.layers.{i}.mlp.down_proj": v for i, v in enumerate([0.2, 0.1, 4.0, 2.0])}  # layer sums 1.2, 5.1, 4.5, 4.0
    calls = []

    def score(mods, n):
        calls.append((sorted(mods), n))
        return {m: fisher[m] for m in mods}

    kept = FisherLayerSelection(2, 3).select(modules, score)
    assert kept == frozenset(_layer_modules([1, 2]) + ["lm_head"])
    assert calls == [(sorted(_layer_modules(range(4))), 3)]  # modules outside the layers are not scored
    assert FisherLayerSelection(4, 1).select(modules, score) == modules and len(calls) == 1  # budget covers all: no pass
    ties = FisherLayerSelection(1, 1).select(frozenset(_layer_modules(range(3))), lambda mods, n: dict.fromkeys(mods, 1.0))
    assert ties == frozenset(_layer_modules([0]))
    assert client_rules({"fisher_layers": 2})[0].batches == 2
    with pytest.raises(ValueError, match="fisher_layers"):
        FisherLayerSelection(0, 1)


def test_trainer_trains_only_the_layer_with_the_largest_fisher_score():
    # Prepare: two decoder layers, one of them to train; a non-zero start so both factors have gradients
    model, tok = tiny_llama()
    cfg = TrainConfig(local_steps=3, batch_size=2, lr=1e-2)
    trainer = LocalTrainer(model, tok, cfg)
    modules = _layer_modules(range(2))
    plan = ClientPlan("c", dict.fromkeys(modules, 2), dict.fromkeys(modules, 4.0))
    gen = torch.Generator().manual_seed(0)
    init = {}
    for m in modules:
        lin = model.get_submodule(m)
        init[m] = LoraFactors(0.1 * torch.randn(2, lin.in_features, generator=gen), 0.1 * torch.randn(lin.out_features, 2, generator=gen), 4.0)
    payload = Payload(plan, init=init, options={"fisher_layers": 1, "fisher_batches": 2})
    # Reference: the Fisher score of each layer on the same seeded batches, at the starting adapter
    data = [encode_example(tok, ex, cfg.max_length) for ex in DATA]
    order = batch_schedule(len(data), cfg.batch_size, 2, torch.Generator().manual_seed(7 ^ 0x5EED))
    batches = [collate([data[i] for i in idx], tok.pad_token_id) for idx in order]
    with trainer.use_adapter(init):
        scores = module_importance(model, batches, modules=modules)
    per_layer = [sum(v for m, v in scores.items() if f".layers.{i}." in m) for i in range(2)]
    best = max(range(2), key=lambda i: (per_layer[i], -i))
    # Execute
    update = trainer.train(payload, DATA, client_seed=7)
    # Assert: only the best layer's modules come back, trained; the model is left clean
    assert sorted(update.factors) == sorted(_layer_modules([best]))
    assert update.metrics["trained_modules"] == 2.0
    for m, f in update.factors.items():
        assert not torch.equal(f.B, init[m].B)
    assert not any(p.requires_grad for p in model.parameters())


def test_fedhello_budgets_layers_and_averages_each_module_over_its_trainers():
    # Prepare: 3 layers, clients with 1/3, 2/3 and all of them
    modules = _layer_modules(range(3))
    s = make_strategy("fedhello", seed=0, layer_fraction=2 / 3, fractions={"c0": 1 / 3, "c2": 1.0})
    plans = [make_plan(f"c{k}", dict.fromkeys(modules, 2)) for k in range(3)]
    payloads = s.configure(1, plans)
    assert [payloads[f"c{k}"].options["fisher_layers"] for k in range(3)] == [1, 2, 3]
    # Execute: each client sends the layers it chose
    gen = torch.Generator().manual_seed(1)
    chosen = {"c0": [2], "c1": [0, 2], "c2": [0, 1, 2]}

    def send(cid, n):
        fs = {}
        for m in modules:
            if int(m.split(".")[2]) in chosen[cid]:
                start = init_lora_factors(12, 10, 2, 4.0, 0, m)
                fs[m] = LoraFactors(start.A + 0.1 * torch.randn(2, 10, generator=gen), torch.randn(12, 2, generator=gen), 4.0)
        return Update(cid, fs, n)

    updates = [send("c0", 3), send("c1", 5), send("c2", 2)]
    result = s.aggregate(1, updates + [Update("c3", {}, 1)])
    # Assert: per module, FedAvg over exactly the clients that trained it
    assert result.accepted == ["c0", "c1", "c2"] and result.metrics["layers_trained"] == 3.0
    g = s.global_adapter()
    for m in modules:
        trained = [u for u in updates if m in u.factors]
        total = sum(u.num_examples for u in trained)
        A = sum(u.num_examples / total * u.factors[m].A.double() for u in trained)
        B = sum(u.num_examples / total * u.factors[m].scale * u.factors[m].B.double() for u in trained)
        assert rel_err(dense(g, m), B @ A) < 1e-6
    # an update with no trainable module is rejected, named
    s.configure(2, plans)
    result = s.aggregate(2, [Update("c0", {}, 3), send("c1", 5)])
    assert result.accepted == ["c1"] and "no trainable module" in result.rejected["c0"]

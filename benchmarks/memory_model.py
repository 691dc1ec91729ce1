"""Predicted vs measured peak training memory of LoRA steps (fedlora.allocation.memory).

Measurement (CPU): the PyTorch profiler with ``profile_memory=True`` records every allocation and
free of the c10 CPU allocator; the peak of their running sum over one training step (forward,
backward, optimizer step) plus the bytes of every tensor live when the step starts (base weights,
LoRA factors, optimizer states) is the measured peak. It counts every tensor torch allocates
(activations, temporaries, gradients, optimizer states, logits); it leaves out the Python runtime,
allocator fragmentation and BLAS scratch space. On CUDA, ``torch.cuda.max_memory_allocated``
gives the same quantity (code path present, not exercised on these CPU machines).
The step is the second one, so that optimizer states exist (steady state); the loop is
``zero_grad(set_to_none=True); loss = model(**batch).loss; loss.backward(); opt.step()``.

    .venv/bin/python benchmarks/memory_model.py            # table + max/mean relative error
    .venv/bin/python benchmarks/memory_model.py --fit      # also fit and print a Calibration
    .venv/bin/python benchmarks/memory_model.py --quick    # tiny model only
    .venv/bin/python benchmarks/memory_model.py --only qwen2.5-0.5b,llama-3.2-1b   # the real shapes only

Models: the tiny test Llama; SmolLM2-135M (bundled) with its base in full precision, LLM.int8() and NF4
(bitsandbytes; the quantized rows measure the dequantization workspace of the forward and backward too);
and two real shapes built from their published configurations with random weights (nothing downloaded):
Qwen2.5-0.5B (24 layers, hidden 896, GQA 14/2 heads, vocabulary 151,936, q/k/v biases) and Llama-3.2-1B
(16 layers, hidden 2048, GQA 32/8 heads, vocabulary 128,256); both tie the embeddings as published.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from fedlora.allocation.memory import Calibration, MemoryModel, Measurement, fit_calibration, format_bytes

warnings.filterwarnings("ignore")


@dataclass(frozen=True)
class Config:
    model: str  # "tiny", "smollm2" or a key of REAL_SHAPES
    layers: tuple[int, ...] | None  # None: every layer
    kinds: tuple[str, ...]
    rank: int = 8
    batch: int = 4
    seq: int = 64
    ckpt: bool = False
    optimizer: str = "adamw"
    padded: bool = True
    quantization: str = "none"

    def label(self) -> str:
        layers = "all" if self.layers is None else ",".join(map(str, self.layers))
        kinds = "+".join(k.split("_")[0] for k in self.kinds)
        extra = (" ckpt" if self.ckpt else "") + ("" if self.optimizer == "adamw" else f" {self.optimizer}") + ("" if self.padded else " nopad")
        extra += "" if self.quantization == "none" else f" {self.quantization}"
        return f"{self.model:12s} L[{layers}] {kinds} r{self.rank} b{self.batch}x{self.seq}{extra}"


ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIGS = [
    Config("tiny", None, ALL, 8, 4, 64),
    Config("tiny", (1,), ("down_proj",), 8, 8, 128),
    Config("tiny", (0,), ("q_proj", "v_proj"), 16, 8, 128),
    Config("tiny", (1,), ("o_proj", "up_proj"), 4, 4, 256),
    Config("tiny", None, ALL, 8, 8, 128, ckpt=True),
    Config("tiny", (0, 1), ("gate_proj",), 8, 8, 64, optimizer="sgd", padded=False),
    Config("smollm2", None, ("q_proj", "v_proj"), 8, 4, 64),
    Config("smollm2", None, ALL, 8, 4, 128),
    Config("smollm2", (29,), ("down_proj",), 8, 4, 128),
    Config("smollm2", (20, 25), ("q_proj", "k_proj", "v_proj", "o_proj"), 16, 4, 128),
    Config("smollm2", (0,), ("gate_proj", "up_proj"), 8, 2, 128),
    Config("smollm2", (15,), ALL, 32, 2, 256),
    Config("smollm2", None, ALL, 8, 4, 128, ckpt=True),
    Config("smollm2", (10, 29), ("v_proj", "down_proj"), 8, 8, 64, optimizer="sgd", padded=False),
    Config("tiny", None, ALL, 8, 4, 64, quantization="nf4"),
    Config("tiny", None, ALL, 8, 4, 64, quantization="int8"),
    Config("smollm2", None, ALL, 8, 4, 128, quantization="nf4"),
    Config("smollm2", (20, 25), ("q_proj", "k_proj", "v_proj", "o_proj"), 16, 4, 128, quantization="nf4"),
    Config("smollm2", None, ALL, 8, 4, 128, quantization="int8"),
    Config("smollm2", (29,), ("down_proj",), 8, 4, 128, quantization="int8"),
    Config("qwen2.5-0.5b", None, ALL, 8, 2, 64),
    Config("qwen2.5-0.5b", None, ("q_proj", "v_proj"), 16, 2, 128),
    Config("qwen2.5-0.5b", (20, 23), ALL, 8, 2, 128, ckpt=True),
    Config("llama-3.2-1b", None, ALL, 8, 2, 64),
    Config("llama-3.2-1b", None, ("q_proj", "v_proj"), 16, 1, 128),
    Config("llama-3.2-1b", (12, 15), ALL, 8, 2, 64, ckpt=True),
]

REAL_SHAPES = {
    # Qwen/Qwen2.5-0.5B config.json (Qwen team, 2024)
    "qwen2.5-0.5b": ("Qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                   rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # meta-llama/Llama-3.2-1B config.json (Meta, 2024)
    "llama-3.2-1b": ("Llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                                   rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
}  # fmt: skip
"""Published configurations of two real model shapes; the benchmark builds them with random weights."""


def load(name: str, quantization: str = "none"):
    if name in REAL_SHAPES:
        import transformers

        family, kwargs = REAL_SHAPES[name]
        config = getattr(transformers, f"{family}Config")(**kwargs)
        torch.manual_seed(0)
        return getattr(transformers, f"{family}ForCausalLM")(config).float(), None
    if name == "tiny":
        from fedlora.config import ModelSection
        from fedlora.engine.build import load_base_model

        return load_base_model(ModelSection(name="tiny", quantization=quantization))
    from fedlora.models import load_model

    return load_model("bundled:smollm2", dtype="float32", device="cpu", quantization=quantization)


def _unique_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(t.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _profile_peak_increment(step) -> int:
    """Peak of the running sum of allocator events during ``step()`` (CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            current += event.nbytes()
            peak = max(peak, current)
    return peak


def measure_peak(model, batch: dict, *, optimizer: str = "adamw", lr: float = 1e-4) -> int:
    """Measured peak bytes of the second training step of ``model`` (LoRA attached) on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr) if optimizer == "adamw" else torch.optim.SGD(params, lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    live = _unique_bytes(list(model.parameters()) + list(model.buffers()) + states)
    device = next(model.parameters()).device
    if device.type == "cuda":  # same quantity from the CUDA caching allocator's statistics
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return live + torch.cuda.max_memory_allocated(device) - start
    return live + _profile_peak_increment(step)


def run_config(cfg: Config, cache: dict) -> tuple[Measurement, float]:
    from peft import LoraConfig, get_peft_model

    from fedlora.models import model_spec

    model, tokenizer = load(cfg.model, cfg.quantization)
    spec = cache.setdefault((cfg.model, cfg.quantization), model_spec(model))
    names = [m.name for m in spec.modules if m.kind in cfg.kinds and (cfg.layers is None or m.layer in cfg.layers)]
    if cfg.ckpt:
        model.gradient_checkpointing_enable()
    peft_model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank, target_modules=names))
    peft_model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, min(spec.vocab_size, 2000), (cfg.batch, cfg.seq), generator=gen)
    mask = torch.ones_like(ids)
    if cfg.padded:
        mask[:, -3:] = 0
    t0 = time.perf_counter()
    measured = measure_peak(peft_model, {"input_ids": ids, "attention_mask": mask, "labels": ids}, optimizer=cfg.optimizer)
    mm = MemoryModel(spec, batch_size=cfg.batch, seq_len=cfg.seq, optimizer=cfg.optimizer, grad_checkpointing=cfg.ckpt,
                     padded_batches=cfg.padded, quantization=cfg.quantization)  # fmt: skip
    del model, peft_model
    return Measurement(mm, {n: cfg.rank for n in names}, measured), time.perf_counter() - t0


def measure_all(configs: list[Config]) -> list[tuple[Config, Measurement]]:
    rows, cache = [], {}
    for cfg in configs:
        meas, seconds = run_config(cfg, cache)
        rows.append((cfg, meas))
        print(f"  measured {cfg.label()} in {seconds:.1f} s", flush=True)
    return rows


def from_json(path: str) -> list[tuple[Config, Measurement]]:
    """Measurements saved by ``--json``, with each model's spec rebuilt (no training step)."""
    from fedlora.models import model_spec

    rows, cache = [], {}
    with open(path) as fh:
        for item in json.load(fh):
            d = item["config"]
            cfg = Config(**{**d, "layers": None if d["layers"] is None else tuple(d["layers"]), "kinds": tuple(d["kinds"])})
            if (cfg.model, cfg.quantization) not in cache:
                cache[(cfg.model, cfg.quantization)] = model_spec(load(cfg.model, cfg.quantization)[0])
            spec = cache[(cfg.model, cfg.quantization)]
            names = [m.name for m in spec.modules if m.kind in cfg.kinds and (cfg.layers is None or m.layer in cfg.layers)]
            mm = MemoryModel(spec, batch_size=cfg.batch, seq_len=cfg.seq, optimizer=cfg.optimizer, grad_checkpointing=cfg.ckpt,
                             padded_batches=cfg.padded, quantization=cfg.quantization)  # fmt: skip
            rows.append((cfg, Measurement(mm, {n: cfg.rank for n in names}, item["measured"])))
    return rows


def report(rows: list[tuple[Config, Measurement]], calibration: Calibration) -> tuple[float, float]:
    print(f"{'configuration':57s} {'measured':>10s} {'predicted':>10s} {'error':>7s}")
    errors = []
    for cfg, meas in rows:
        model = MemoryModel(meas.model.spec, **{**meas.model.config(), "calibration": calibration})
        predicted = model.peak_bytes(meas.ranks)
        err = (predicted - meas.measured_bytes) / meas.measured_bytes
        errors.append(abs(err))
        print(f"{cfg.label():57s} {format_bytes(meas.measured_bytes):>10s} {format_bytes(predicted):>10s} {100 * err:+6.1f}%")
    max_err, mean_err = max(errors), sum(errors) / len(errors)
    print(f"relative error: max {100 * max_err:.1f}%  mean {100 * mean_err:.1f}%  over {len(errors)} configurations")
    return max_err, mean_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--only", help="comma-separated models to measure (tiny, smollm2, qwen2.5-0.5b, llama-3.2-1b)")
    parser.add_argument("--fit", action="store_true", help="fit a Calibration on these measurements and report with it")
    parser.add_argument("--json", help="write the measurements to this file")
    parser.add_argument("--from-json", help="re-use measurements written by --json instead of measuring")
    args = parser.parse_args()
    torch.manual_seed(0)
    configs = [c for c in CONFIGS if c.model == "tiny"] if args.quick else CONFIGS
    if args.only:
        configs = [c for c in configs if c.model in args.only.split(",")]
    rows = from_json(args.from_json) if args.from_json else measure_all(configs)
    calibration = MemoryModel(rows[0][1].model.spec, batch_size=1, seq_len=1).calibration
    print(f"\nwith the shipped calibration {calibration}")
    report(rows, calibration)
    if args.fit:
        fitted = fit_calibration([m for _, m in rows])
        print(f"\nwith the calibration fitted here {fitted}")
        report(rows, fitted)
    if args.json:
        data = [{"config": asdict(cfg), "label": cfg.label(), "measured": m.measured_bytes, "predicted": m.model.peak_bytes(m.ranks)} for cfg, m in rows]
        with open(args.json, "w") as fh:
            json.dump(data, fh, indent=1)


if __name__ == "__main__":
    main()

"""One table of what a GPU changes for fedlora: a training step per base precision, the memory model against
the allocator, lockstep against sequential training of 16 clients, and evaluation speed.

    python benchmarks/gpu_check.py            # CUDA when present (SmolLM2-135M); else the CPU parts (tiny model)
    bash benchmarks/gpu_check.sh              # the same, with the 8-minute limit and the log kept

Rows (one table, printed at the end, also as JSON with ``--json``):

* ``step <precision>``: seconds per LoRA step (rank 8 on every projection, batch 4 x 128, AdamW, after two
  warm-up steps) with the frozen base at none / int8 / nf4 (bitsandbytes), and the peak bytes of that step:
  ``torch.cuda.max_memory_allocated`` on CUDA (the CPU parts measure the step time only);
* ``memory <precision> b x s``: the memory model's predicted peak (``MemoryModel.peak_bytes`` with
  ``quantization``) against the measured one, and the relative error, over three batch shapes;
* ``lockstep 16 clients``: ``train.lockstep`` (a round's clients in one batched pass) against one client
  after another, the ratio of their wall times (``benchmarks/lockstep_speed.py``'s measurement, in process);
* ``eval``: generated-and-scored examples per second (``fedlora.eval.evaluate``, 64 examples).

On a machine without CUDA it says so and runs every row on the CPU with the tiny random model (seconds),
so the script itself is tested here; the figures that matter come from a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_model import measure_peak  # noqa: E402  (the allocator measurement the memory-model benchmark uses)

from fedlora.allocation.memory import MemoryModel  # noqa: E402
from fedlora.config import ModelSection  # noqa: E402
from fedlora.engine.build import build_spec, load_base_model  # noqa: E402

PRECISIONS = ("none", "int8", "nf4")


def _model(name: str, device: str, quantization: str):
    from peft import LoraConfig, get_peft_model

    section = ModelSection(name=name, dtype="bfloat16" if device == "cuda" else "float32", device=device, quantization=quantization)
    model, tokenizer = load_base_model(section)
    if name == "tiny" and device == "cuda":
        model = model.to(device)
    spec = build_spec(model, section)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(section.target_modules)))
    peft.train()
    return peft, tokenizer, spec


def _batch(spec, batch: int, seq: int, device: str) -> dict:
    ids = torch.randint(4, min(spec.vocab_size, 2000), (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def step_rows(name: str, device: str, steps: int) -> list[dict]:
    rows = []
    for q in PRECISIONS:
        try:
            model, _, spec = _model(name, device, q)
        except ImportError as err:
            rows.append({"check": f"step {q}", "value": "skipped", "note": str(err)})
            continue
        batch = _batch(spec, 4, 128 if name != "tiny" else 32, device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for i in range(steps + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        rows.append({"check": f"step {q}", "value": f"{sum(times) / len(times):.3f} s/step",
                     "note": f"peak {peak / 2**20:.0f} MiB" if peak else "CPU: time only"})  # fmt: skip
        del model, opt
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return rows


def memory_rows(name: str, device: str) -> list[dict]:
    rows = []
    shapes = ((1, 64), (4, 128), (8, 256)) if name != "tiny" else ((1, 16), (2, 32), (4, 32))
    for q in PRECISIONS:
        for b, s in shapes:
            try:
                model, _, spec = _model(name, device, q)
            except ImportError as err:
                rows.append({"check": f"memory {q}", "value": "skipped", "note": str(err)})
                break
            measured = measure_peak(model, _batch(spec, b, s, device))
            names = [m.name for m in spec.modules]
            model_of_memory = MemoryModel(spec, batch_size=b, seq_len=s, dtype_bytes=spec.param_bytes, quantization=q, padded_batches=False)
            predicted = model_of_memory.peak_bytes({n: 8 for n in names})
            rows.append({"check": f"memory {q} {b}x{s}", "value": f"{100 * (predicted - measured) / measured:+.1f}%",
                         "note": f"predicted {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB"})  # fmt: skip
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def lockstep_row(quick: bool, device: str) -> dict:
    import subprocess

    cmd = [sys.executable, str(Path(__file__).with_name("lockstep_speed.py")), "--clients", "16", "--steps", "2", "--repeats", "1",
           "--device", device] + (["--quick"] if quick else [])  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240).stdout.strip().splitlines()
    except subprocess.TimeoutExpired:
        return {"check": "lockstep 16 clients", "value": "timed out", "note": "over 240 s"}
    ratio = next((line.split(":")[-1].split("(")[0].strip() for line in reversed(out) if line.startswith("lockstep speed-up")), "no result")
    diff = next((line.split(":")[-1].strip() for line in out if line.startswith("largest relative difference")), "?")
    return {"check": "lockstep 16 clients", "value": f"{ratio} sequential/lockstep", "note": f"lockstep_speed.py, 2 steps; "
            f"largest update difference {diff}"}  # fmt: skip


def eval_row(name: str, device: str) -> dict:
    from fedlora.data import load_bundled_benchmark
    from fedlora.eval import evaluate

    model, tokenizer, _ = _model(name, device, "none")
    model.eval()
    bench = load_bundled_benchmark(tasks=["rt_sentiment", "bbc_headline"], heldout_tasks=(), max_train_per_task=1, max_eval_per_task=32)
    t0 = time.perf_counter()
    evaluate(model, tokenizer, bench.eval, max_new_tokens=16, batch_size=32, max_length=128)
    seconds = time.perf_counter() - t0
    return {"check": "eval", "value": f"{len(bench.eval) / seconds:.1f} examples/s", "note": f"{len(bench.eval)} examples, 16 new tokens"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the table to this JSON file")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, name = ("cuda", "bundled:smollm2") if cuda else ("cpu", "tiny")
    card = torch.cuda.get_device_name(0) if cuda else "no CUDA device: CPU parts only, tiny random model"
    print(f"gpu_check: {card}", flush=True)
    rows = step_rows(name, device, args.steps) + memory_rows(name, device) + [lockstep_row(not cuda, device), eval_row(name, device)]
    width = max(len(r["check"]) for r in rows)
    print(f"\n{'check':<{width}}  {'value':<28}  note\n" + "-" * (width + 60))
    for r in rows:
        print(f"{r['check']:<{width}}  {r['value']:<28}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": card, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

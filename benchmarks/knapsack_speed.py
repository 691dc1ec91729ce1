"""Time of Fed-pilot's exact module selection on a LLaMA-7B-shaped module set (target < 100 ms).

32 layers x 7 LoRA modules (224 candidates), LLaMA-7B shapes (hidden 4096, intermediate 11008,
32 heads, vocab 32000, 6.74 B bf16 parameters), batch 4 x 512 tokens, AdamW, random values.

    .venv/bin/python benchmarks/knapsack_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedlora.allocation.knapsack import select_modules
from fedlora.allocation.memory import MemoryModel, format_bytes
from fedlora.modelspec import ModelSpec, ModuleSpec

_KINDS = {
    "q_proj": ("self_attn", 4096, 4096), "k_proj": ("self_attn", 4096, 4096), "v_proj": ("self_attn", 4096, 4096),
    "o_proj": ("self_attn", 4096, 4096), "gate_proj": ("mlp", 4096, 11008), "up_proj": ("mlp", 4096, 11008),
    "down_proj": ("mlp", 11008, 4096),
}  # fmt: skip


def llama7b_spec() -> ModelSpec:
    """LLaMA-7B's shapes as a ModelSpec (no model needed)."""
    modules = tuple(
        ModuleSpec(f"model.layers.{layer}.{block}.{kind}", d_in, d_out, layer, kind)
        for layer in range(32)
        for kind, (block, d_in, d_out) in _KINDS.items()
    )
    return ModelSpec(modules, 32, 4096, 11008, 32, 32, 32000, 6_738_415_616, param_bytes=2)


def time_solver(rank_options, budget_gib: float, repeats: int, **mm_kwargs) -> tuple[float, object]:
    spec = llama7b_spec()
    mm = MemoryModel(spec, **mm_kwargs)
    gen = torch.Generator().manual_seed(0)
    values = {m.name: float(v) for m, v in zip(spec.modules, torch.rand(len(spec.modules), generator=gen))}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        selection = select_modules(values, mm, int(budget_gib * 2**30), rank_options)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = dict(batch_size=4, seq_len=512, dtype_bytes=2, optimizer="adamw")
    cases = [
        ("rank 8, 20 GiB", (8,), 20.0, base),
        ("rank 8, 16 GiB", (8,), 16.0, base),
        ("rank 8, 40 GiB", (8,), 40.0, base),
        ("rank 8, 16 GiB, checkpointing", (8,), 16.0, {**base, "grad_checkpointing": True}),
        ("ranks {4,8,16}, 20 GiB", (4, 8, 16), 20.0, base),
    ]
    print(f"{'case':34s} {'median':>9s} {'modules':>8s} {'layers from':>11s} {'predicted':>10s}")
    for label, ranks, budget, kwargs in cases:
        seconds, sel = time_solver(ranks, budget, args.repeats, **kwargs)
        print(f"{label:34s} {1000 * seconds:7.1f} ms {len(sel.modules):8d} {sel.shallowest_layer:11d} {format_bytes(sel.predicted_bytes):>10s}")


if __name__ == "__main__":
    main()

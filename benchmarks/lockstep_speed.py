"""Lockstep against sequential training of a round's clients: K clients of different ranks (4..32)
on SmolLM2-135M, each ``--steps`` local steps of batch 4, trained one after another with
``LocalTrainer.train`` and together with ``LocalTrainer.train_lockstep`` (one batched forward and
backward of the frozen base per step, each row through its own client's adapter).

Each repetition runs both, interleaved; the median ratio (sequential seconds / lockstep seconds,
> 1: lockstep faster) prints last, with the largest relative difference between the two results'
updates (they must agree up to float rounding).

    python benchmarks/lockstep_speed.py --threads 1              # SmolLM2 bf16 on CPU, a few minutes
    python benchmarks/lockstep_speed.py --device cuda --clients 16   # on a GPU
    python benchmarks/lockstep_speed.py --quick                  # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.data.bundled import load_bundled_benchmark
from fedlora.models import model_spec
from fedlora.strategies.base import Payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny random model")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        from fedlora.testing import tiny_llama

        model, tok = tiny_llama()
        name = "tiny (random)"
    else:
        from fedlora.models import load_model

        dtype = "bfloat16"
        model, tok = load_model("bundled:smollm2", dtype=dtype, device=args.device)
        name = f"SmolLM2-135M {dtype} on {args.device}"
    model.to(args.device)
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=args.steps, batch_size=4, lr=5e-4, max_length=96))
    data = load_bundled_benchmark(max_train_per_task=16, max_eval_per_task=1, heldout_tasks=(), seed=0,
                                  tasks=["rt_sentiment", "bbc_topic", "bbc_headline", "guardian_unscramble"]).train  # fmt: skip
    modules = model_spec(model).module_names
    ranks = [(4, 8, 16, 32)[k % 4] for k in range(args.clients)]
    jobs = [(Payload(ClientPlan.uniform(f"c{k}", modules, r, 2.0 * r), seed=0), data[k::args.clients], 100 + k)
            for k, r in enumerate(ranks)]  # fmt: skip

    def sequential() -> tuple[float, list]:
        start = time.perf_counter()
        out = [trainer.train(pl, ex, client_seed=s) for pl, ex, s in jobs]
        return time.perf_counter() - start, out

    def lockstep() -> tuple[float, list]:
        start = time.perf_counter()
        out = trainer.train_lockstep(jobs)
        return time.perf_counter() - start, out

    sequential(), lockstep()  # warm-up
    ratios, worst = [], 0.0
    for rep in range(args.repeats):
        (t_seq, a), (t_lock, b) = sequential(), lockstep()
        ratios.append(t_seq / t_lock)
        for u, v in zip(a, b):
            for m in u.factors:
                ref = u.factors[m].B @ u.factors[m].A
                worst = max(worst, float((v.factors[m].B @ v.factors[m].A - ref).norm() / ref.norm().clamp_min(1e-12)))
        print(f"repeat {rep + 1}: sequential {t_seq:.2f} s, lockstep {t_lock:.2f} s", flush=True)
    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    print(f"model {name}, {args.clients} clients of ranks {sorted(set(ranks))}, {args.steps} steps of batch 4, threads {threads}")
    print(f"largest relative difference of an update (B A) between the two: {worst:.2e}")
    print(f"lockstep speed-up (sequential / lockstep seconds, median of {args.repeats}): {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

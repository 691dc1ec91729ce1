"""Evaluation speed: multiple-choice likelihood scoring with one forward pass per (example, choice)
against fedlora's shared-prompt scoring (each prompt encoded once, its KV cache re-used by every
choice), in fp32 and with the frozen model in bf16; and the agreement of the scores.

Both variants score the same bundled classification examples in this process, interleaved
(A, B, A, B, ...) and repeated, so that load from other processes hits both alike; the median of
the repetitions is compared. Prints the ratios last.

    python benchmarks/eval_speed.py                 # SmolLM2, 64 examples of 4 tasks, 3 repetitions
    python benchmarks/eval_speed.py --quick         # tiny random model, under a minute
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from fedlora.data.bundled import load_bundled_benchmark
from fedlora.eval.generation import teacher_forced
from fedlora.eval.likelihood import choice_scores

TASKS = ["rt_sentiment", "bbc_topic", "debate_speaker", "headline_source"]


def per_pair_scores(model, tok, examples, batch_size: int, max_length: int) -> list[list[float]]:
    """The obvious code: every (example, choice) pair as its own sequence, one forward each."""
    pairs = [replace(ex, output=c) for ex in examples for c in ex.choices]
    flat = [s.nll_sum for s in teacher_forced(model, tok, pairs, batch_size=batch_size, max_length=max_length)]
    out, at = [], 0
    for ex in examples:
        out.append(flat[at : at + len(ex.choices)])
        at += len(ex.choices)
    return out


def shared_scores(model, tok, examples, batch_size: int, max_length: int) -> list[list[float]]:
    return [[s.nll_sum for s in row] for row in choice_scores(model, tok, examples, batch_size=batch_size, max_length=max_length)]


def timed(fn, *args) -> tuple[float, list]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model, 16 examples, 2 repetitions")
    p.add_argument("--examples", type=int, default=16, help="examples per task")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        from fedlora.testing import tiny_llama

        model, tok = tiny_llama()
        args.examples, args.reps, dtypes = 4, 2, ["float32"]
    else:
        from fedlora.models import load_model

        model, tok = load_model("bundled:smollm2", dtype="float32", device="cpu")
        dtypes = ["float32", "bfloat16"]
    bench = load_bundled_benchmark(max_train_per_task=1, max_eval_per_task=args.examples, heldout_tasks=(), tasks=TASKS, seed=0)
    examples = bench.eval
    print(f"{len(examples)} examples of {len(TASKS)} tasks, {sum(len(e.choices) for e in examples)} (example, choice) pairs, "
          f"{args.threads} thread(s), batch {args.batch_size}")
    times: dict[tuple[str, str], list[float]] = {}
    scores: dict[tuple[str, str], list] = {}
    for dtype in dtypes:
        model.to(getattr(torch, dtype))
        for _ in range(args.reps):
            for name, fn in (("per-pair", per_pair_scores), ("shared-prompt", shared_scores)):
                seconds, result = timed(fn, model, tok, examples, args.batch_size, 128)
                times.setdefault((dtype, name), []).append(seconds)
                scores[(dtype, name)] = result
    ref = scores[("float32", "per-pair")]
    for (dtype, name), ts in times.items():
        got = scores[(dtype, name)]
        err = max(abs(a - b) / max(1, len(r)) for row_a, row_b, r in zip(got, ref, ref) for a, b in zip(row_a, row_b))
        agree = statistics.fmean(float(min(range(len(a)), key=a.__getitem__) == min(range(len(b)), key=b.__getitem__)) for a, b in zip(got, ref))
        print(f"{dtype:9} {name:14} median {statistics.median(ts):7.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})  "
              f"max |NLL diff| vs fp32 per-pair {err:.2e}, same predicted choice {100 * agree:.1f}%")
    base = statistics.median(times[("float32", "per-pair")])
    for key, ts in times.items():
        if key != ("float32", "per-pair"):
            print(f"ratio fp32 per-pair / {key[0]} {key[1]}: {base / statistics.median(ts):.2f}x")


if __name__ == "__main__":
    main()

"""Would lockstep training of a round's clients pay on this machine? One forward and backward over K
clients' batches at once against K separate steps, on the shared frozen base.

Lockstep (issue 12) routes K clients' batches through one batched forward and backward; its gain is
whatever a K-times larger batch buys over K small ones on the same hardware. This measures exactly
that: ``K`` steps of batch ``b`` against one step of batch ``K·b`` (the same number of sequences of
``--length`` random tokens), SmolLM2-135M frozen in bf16, PEFT LoRA rank 8 on every projection with
fp32 factors, forward + backward, interleaved and repeated; the median ratio prints last (> 1: the
big batch is faster per sequence).

    python benchmarks/batching_gain.py --threads 1          # a few minutes
    python benchmarks/batching_gain.py --quick              # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4, help="K: clients trained in lockstep")
    p.add_argument("--batch", type=int, default=4, help="b: each client's batch")
    p.add_argument("--length", type=int, default=96, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny random model")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    if args.quick:
        from fedlora.testing import tiny_llama

        model, _ = tiny_llama()
        targets, name = ["q_proj", "v_proj"], "tiny (random)"
    else:
        from fedlora.models import load_model

        model, _ = load_model("bundled:smollm2", dtype="bfloat16", device="cpu")
        targets, name = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "SmolLM2-135M bf16"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    peft_model.train()
    vocab = peft_model.config.vocab_size

    def seconds(batch: int, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            ids = torch.randint(10, vocab - 1, (batch, args.length))
            peft_model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            peft_model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds(args.batch, 1), seconds(args.batch * args.clients, 1)  # warm-up
    ratios = []
    for rep in range(args.repeats):
        separate = seconds(args.batch, args.clients)
        together = seconds(args.batch * args.clients, 1)
        ratios.append(separate / together)
        print(f"repeat {rep + 1}: {args.clients} steps of batch {args.batch}: {separate:.2f} s; 1 step of batch "
              f"{args.batch * args.clients}: {together:.2f} s", flush=True)  # fmt: skip
    print(f"model {name}, {torch.get_num_threads()} threads, {args.length} tokens per sequence")
    print(f"lockstep batching gain (separate / together, median of {args.repeats}): {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Local training speed: a plain PEFT loop against fedlora's trainer, and bf16 against fp32 loss curves.

Variants, each training the same client (LoRA rank 8 on every projection, AdamW, batch 4 x 64
tokens of the bundled tasks, the same batches) on SmolLM2-135M-Instruct:

* ``plain-peft-fp32``: ``get_peft_model`` on the fp32 model, ``model(**batch).loss`` (LM head on every
  position), the obvious code;
* ``fedlora-fp32``: fedlora's ``LocalTrainer`` on the fp32 model (LM head and loss on the answer
  positions only);
* ``fedlora-bf16``: the same on the model frozen in bf16 (LoRA factors and optimizer in fp32).

Each repetition runs every variant for ``--steps`` steps, interleaved, so that load from other
processes hits all alike; steps per second are the median over repetitions. Then fedlora-fp32 and
fedlora-bf16 train 50 steps from the same initial factors on the same batches; the tolerance is on
the mean loss of each window of 10 steps (|bf16 - fp32| <= 0.05), since a single batch's loss moves
with the bf16 rounding of the frozen weights (that largest single-step difference is printed too).
Ratios print last.

    python benchmarks/train_speed.py --threads 1          # ~10 min on one core
    python benchmarks/train_speed.py --quick              # tiny random model, under a minute
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.client.trainer import LocalTrainer, TrainConfig, batch_schedule
from fedlora.data.bundled import load_bundled_benchmark
from fedlora.data.formatting import collate, encode_example
from fedlora.models import model_spec
from fedlora.strategies.base import Payload

RANK, BATCH, LENGTH, LR = 8, 4, 64, 5e-4
LOSS_TOLERANCE = 0.05  # max |mean loss bf16 - mean loss fp32| over each window of 10 steps, 50 steps
WINDOW = 10


def plain_peft_steps(model, tok, examples, steps: int, seed: int) -> float:
    """Seconds for ``steps`` steps of a textbook PEFT loop (the model is restored afterwards)."""
    from peft import LoraConfig, get_peft_model

    data = [encode_example(tok, ex, LENGTH) for ex in examples]
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "k_proj", "v_proj",
                                                   "o_proj", "gate_proj", "up_proj", "down_proj"]))  # fmt: skip
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    peft_model.train()
    started = time.perf_counter()
    for idx in batch_schedule(len(data), BATCH, steps, torch.Generator().manual_seed(seed)):
        loss = peft_model(**collate([data[i] for i in idx], tok.pad_token_id), use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    peft_model.unload()
    if hasattr(model, "peft_config"):
        del model.peft_config
    return seconds


def fedlora_steps(trainer: LocalTrainer, plan: ClientPlan, examples, steps: int, seed: int) -> tuple[float, list[float]]:
    """Seconds of ``steps`` steps of fedlora's trainer (setup excluded) and the loss of each step."""
    trainer.config = TrainConfig(local_steps=steps, batch_size=BATCH, lr=LR, max_length=LENGTH)
    losses: list[float] = []
    update = trainer.train(Payload(plan, seed=0), examples, client_seed=seed, on_step=losses.append)
    return update.metrics["seconds"] - update.metrics["setup_seconds"], losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--curve-steps", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        from fedlora.testing import tiny_llama

        fp32, tok = tiny_llama()
        bf16, _ = tiny_llama()
        args.steps, args.reps, args.curve_steps = 3, 2, 10
    else:
        from fedlora.models import load_model

        fp32, tok = load_model("bundled:smollm2", dtype="float32", device="cpu")
        bf16, _ = load_model("bundled:smollm2", dtype="bfloat16", device="cpu")
    bf16.to(torch.bfloat16)
    examples = load_bundled_benchmark(max_train_per_task=32, max_eval_per_task=1, heldout_tasks=(), seed=0,
                                      tasks=["rt_sentiment", "bbc_topic", "bbc_headline", "guardian_unscramble"]).train  # fmt: skip
    plan = ClientPlan.uniform("client", model_spec(fp32).module_names, RANK, 2.0 * RANK)
    trainers = {"fedlora-fp32": LocalTrainer(fp32, tok, TrainConfig()), "fedlora-bf16": LocalTrainer(bf16, tok, TrainConfig())}
    print(f"{len(examples)} examples, rank {RANK} on {len(plan.ranks)} modules, batch {BATCH} x {LENGTH}, {args.threads} thread(s), "
          f"{args.steps} steps x {args.reps} repetitions, interleaved")
    rates: dict[str, list[float]] = {}
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        seconds = {"plain-peft-fp32": plain_peft_steps(fp32, tok, examples, args.steps, rep)}
        for name, trainer in trainers.items():
            seconds[name] = fedlora_steps(trainer, plan, examples, args.steps, rep)[0]
        if rep:
            for name, s in seconds.items():
                rates.setdefault(name, []).append(args.steps / s)
    for name, r in rates.items():
        print(f"{name:16} {statistics.median(r):6.3f} steps/s (min {min(r):.3f}, max {max(r):.3f})")
    _, curve32 = fedlora_steps(trainers["fedlora-fp32"], plan, examples, args.curve_steps, 1234)
    _, curve16 = fedlora_steps(trainers["fedlora-bf16"], plan, examples, args.curve_steps, 1234)
    step_gap = max(abs(a - b) for a, b in zip(curve32, curve16))
    window = min(WINDOW, len(curve32))
    means = [(statistics.mean(curve32[i : i + window]), statistics.mean(curve16[i : i + window]))
             for i in range(0, len(curve32) - window + 1, window)]  # fmt: skip
    gap = max(abs(a - b) for a, b in means)
    print(f"loss curves over {args.curve_steps} steps, same init and batches: fp32 {curve32[0]:.3f} -> {curve32[-1]:.3f}, "
          f"bf16 {curve16[0]:.3f} -> {curve16[-1]:.3f}")
    print("  mean loss per window of %d steps, fp32 / bf16: %s" % (window, ", ".join(f"{a:.3f}/{b:.3f}" for a, b in means)))
    print(f"  largest window-mean difference {gap:.4f} ({'within' if gap <= LOSS_TOLERANCE else 'ABOVE'} the tolerance "
          f"{LOSS_TOLERANCE}); largest single-step difference {step_gap:.4f} (one batch: bf16 weights round the base model)")
    base = statistics.median(rates["plain-peft-fp32"])
    for name in ("fedlora-fp32", "fedlora-bf16"):
        print(f"ratio {name} / plain-peft-fp32 (steps per second): {statistics.median(rates[name]) / base:.2f}x")


if __name__ == "__main__":
    main()

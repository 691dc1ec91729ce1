"""How much does switching simulated clients cost, next to one local training step?

A client switch = install PEFT LoRA layers shaped by the plan + load its factors + remove them,
either building fresh PEFT layers each time or re-using pooled ones (what ``LocalTrainer`` does).
Printed: median wall and CPU seconds of a switch, of one local step (forward + backward + AdamW)
and of a whole ``LocalTrainer.train(local_steps=1)`` call, and the switch / step ratios.

    .venv/bin/python benchmarks/client_overhead.py --model tiny
    .venv/bin/python benchmarks/client_overhead.py --model bundled:smollm2 --batch-size 4 --seq-len 64
    .venv/bin/python benchmarks/client_overhead.py --model bundled:smollm2 --eval 40   # evaluate() speed

``--threads N`` sets ``torch.set_num_threads`` (default: torch's choice).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.client.layer_pool import LoraLayerPool
from fedlora.client.peft_bridge import install_adapter, remove_adapter
from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.data.example import Example
from fedlora.lora.linalg import init_lora_factors
from fedlora.strategies.base import Payload


def _load(name: str):
    if name == "tiny":
        from fedlora.testing import tiny_llama

        return tiny_llama()
    from fedlora.models import load_model

    return load_model(name, dtype="float32", device="cpu")


def _plan(model, rank: int, client: int) -> ClientPlan:
    from fedlora.models import DEFAULT_TARGETS, model_spec

    modules = [m.name for m in model_spec(model, DEFAULT_TARGETS).modules]
    return ClientPlan.uniform(f"c{client}", modules, rank, 2.0 * rank)


def _examples(seq_len: int, n: int) -> list[Example]:
    words = " ".join(f"w{i}" for i in range(seq_len))
    return [Example("Repeat the words.", words[: seq_len * 2], words[: seq_len], "bench") for _ in range(n)]


def _median_time(fn, reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` (CPU = this process, all threads)."""
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--eval", type=int, default=0, help="time evaluate() on this many bundled eval examples instead")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = _load(args.model)
    if args.eval:
        _time_eval(model, tok, args.eval, args.max_new_tokens)
        return
    plan = _plan(model, args.rank, 0)
    factors = {m: init_lora_factors(model.get_submodule(m).out_features, model.get_submodule(m).in_features,
                                    args.rank, 2.0 * args.rank, 0, m) for m in plan.ranks}

    def switch() -> None:  # PEFT's inject_adapter_in_model every time
        install_adapter(model, plan, factors, trainable=plan.trainable_modules)
        remove_adapter(model, list(plan.ranks))

    pool = LoraLayerPool(model)

    def pooled_switch() -> None:  # what LocalTrainer does: PEFT layers re-used across clients
        pool.install(plan, factors, trainable=plan.trainable_modules)
        pool.remove(list(plan.ranks))

    switch(), pooled_switch()  # warm-up
    t_fresh, t_switch = _median_time(switch, args.reps), _median_time(pooled_switch, args.reps)
    examples = _examples(args.seq_len // 2, args.batch_size)  # prompt + answer ≈ seq_len tokens
    config = TrainConfig(local_steps=1, batch_size=args.batch_size, lr=1e-4, max_length=args.seq_len)
    trainer = LocalTrainer(model, tok, config)
    trainer.train(Payload(plan, init=factors), examples, client_seed=0)  # warm-up
    one = _median_time(lambda: trainer.train(Payload(plan, init=factors), examples, client_seed=0), args.reps)
    trainer.config = TrainConfig(**{**config.__dict__, "local_steps": 5})
    five = _median_time(lambda: trainer.train(Payload(plan, init=factors), examples, client_seed=0), max(2, args.reps // 2))
    t_step = tuple((b - a) / 4 for a, b in zip(one, five))
    print(f"model={args.model} modules={len(plan.ranks)} rank={args.rank} batch={args.batch_size}x{args.seq_len} "
          f"threads={torch.get_num_threads()}   (wall s / cpu s)")
    print(f"switch, fresh PEFT layers:        {t_fresh[0]:.3f} / {t_fresh[1]:.3f}")
    print(f"switch, pooled layers (trainer):  {t_switch[0]:.3f} / {t_switch[1]:.3f}")
    print(f"one local step:                   {t_step[0]:.3f} / {t_step[1]:.3f}")
    print(f"train(local_steps=1):             {one[0]:.3f} / {one[1]:.3f}")
    print(f"switch / step = fresh {t_fresh[1] / t_step[1]:.3f}, pooled {t_switch[1] / t_step[1]:.3f} (cpu)")


def _time_eval(model, tok, n: int, max_new_tokens: int) -> None:
    from fedlora.data import load_bundled_benchmark
    from fedlora.eval import evaluate

    bench = load_bundled_benchmark(max_train_per_task=0, max_eval_per_task=max(1, n // 8 + 1), seed=0)
    examples = bench.eval[::max(1, len(bench.eval) // n)][:n]
    for generate in (False, True):
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate(model, tok, examples, max_new_tokens=max_new_tokens, batch_size=8, generate=generate)
        print(f"evaluate(n={len(examples)}, max_new_tokens={max_new_tokens}, generate={generate}): "
              f"wall {time.perf_counter() - start:.1f} s, cpu {time.process_time() - cpu:.1f} s  rougeL={result.get('rougeL', float('nan')):.3f} "
              f"rougeL_tf={result['rougeL_tf']:.3f} loss={result['loss']:.3f} accuracy={result.get('accuracy', float('nan')):.3f}")


if __name__ == "__main__":
    main()

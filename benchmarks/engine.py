"""Engine overhead and memory flatness.

1. Time per client: the in-process engine (one round: configure, train every client, aggregate,
   no evaluation) against a plain PEFT training loop doing the same steps on the same batches
   (``get_peft_model`` at the client's rank, AdamW, ``unload`` after). Both run in this process,
   interleaved A/B/A/B so that load from other processes hits both alike; the median of the
   repetitions is compared. Target: engine / plain <= 1.10.
2. Peak RSS with 10 vs 1000 registered clients (each in its own subprocess; the same data,
   rounds, sampled clients per round and steps): the process peak, and the peak of the run itself
   (high-water mark reset after loading the model, Linux). Target: within 10 %.

    python benchmarks/engine.py                    # tiny model and SmolLM2 (batch 4 x 64)
    python benchmarks/engine.py --models tiny --reps 3 --threads 1 --json /tmp/engine.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedlora.config import parse_config
from fedlora.engine.run import Engine

MODELS = {"tiny": "tiny", "smollm2": "bundled:smollm2"}
TASKS = ["rt_sentiment", "headline_source", "convention_party", "debate_speaker", "bbc_topic", "guardian_unscramble"]
TRAIN_PER_TASK = 800  # ~4,400 examples: at least 4 per client (a full batch) even with 1,000 clients


def make_config(model: str, num_clients: int, per_round: int, steps: int, rounds: int = 1, rank_levels=(4, 8, 16, 32)) -> object:
    return parse_config({
        "run": {"rounds": rounds, "seed": 0, "eval_every": 0, "checkpoint_every": 1000},
        "model": {"name": MODELS[model], "dtype": "float32", "device": "cpu"},
        "data": {"tasks": TASKS, "heldout_tasks": [], "partition": "iid", "num_clients": num_clients,
                 "max_train_per_task": TRAIN_PER_TASK, "max_eval_per_task": 1},  # the same examples for 10 or 1000 clients
        "clients": {"rank_levels": list(rank_levels), "clients_per_round": per_round},
        "strategy": {"name": "flexlora"},
        "train": {"local_steps": steps, "batch_size": 4, "max_length": 64, "lr": 3e-4},
        "eval": {"seen": False, "heldout": False},
    })  # fmt: skip


def engine_round(engine: Engine, server_round: int) -> float:
    """Wall seconds of one full round (configure, train, aggregate), per client."""
    started = time.perf_counter()
    engine._round(server_round)
    return (time.perf_counter() - started) / engine.per_round


def plain_peft_round(engine: Engine, server_round: int) -> float:
    """The same clients, steps and batches with a textbook PEFT loop, wall seconds per client."""
    from peft import LoraConfig, get_peft_model

    from fedlora.client.trainer import batch_schedule
    from fedlora.data.formatting import collate, encode_example
    from fedlora.engine.sampling import client_seed, sample_clients

    cfg, model, tok = engine.cfg, engine.model, engine.tokenizer
    ids = sample_clients(engine.data.client_ids, server_round, engine.per_round, cfg.run.seed)
    started = time.perf_counter()
    for cid in ids:
        rank = engine.planner.ranks[engine.data.client_ids.index(cid)]
        data = [encode_example(tok, ex, cfg.train.max_length) for ex in engine.data.clients[cid]]
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(cfg.model.target_modules)))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr)
        peft_model.train()
        gen = torch.Generator().manual_seed(client_seed(cfg.run.seed, server_round, cid))
        for idx in batch_schedule(len(data), cfg.train.batch_size, cfg.train.local_steps, gen):
            loss = peft_model(**collate([data[i] for i in idx], tok.pad_token_id), use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        _ = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}  # the "upload"
        peft_model.unload()
        if hasattr(model, "peft_config"):
            del model.peft_config
    return (time.perf_counter() - started) / len(ids)


def overhead(model: str, reps: int, steps: int, clients: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(make_config(model, clients, clients, steps, rounds=2 * reps + 1), tmp)
        engine.setup()
        engine._restore(None)
        engine._started = time.perf_counter()
        engine_round(engine, 1)  # warm-up round (first allocations, thread pools); not timed
        plain_peft_round(engine, 1)
        eng, plain = [], []
        for r in range(reps):
            eng.append(engine_round(engine, 2 + r))
            plain.append(plain_peft_round(engine, 2 + r))
    e, p = statistics.median(eng), statistics.median(plain)
    return {"model": model, "steps": steps, "clients": clients, "engine_s_per_client": e, "plain_peft_s_per_client": p,
            "ratio": e / p, "engine_runs": eng, "plain_runs": plain}  # fmt: skip


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MB, None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_child(model: str, num_clients: int, steps: int) -> None:
    """Subprocess body: a 2-round run with ``num_clients`` registered clients (all rank 16), 4 sampled per round.

    Prints the process peak (``ru_maxrss``, includes loading the model) and the run's own peak: the
    model is loaded first, then the kernel's high-water mark is reset (``/proc/self/clear_refs``)
    before data, plans, strategy, training and aggregation.
    """
    from fedlora.engine.build import load_base_model

    cfg = make_config(model, num_clients, 4, steps, rounds=2, rank_levels=(16,))  # same work, only the roster differs
    loaded = load_base_model(cfg.model)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    with tempfile.TemporaryDirectory() as tmp:
        Engine(cfg, tmp, model_and_tokenizer=loaded).run()
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "run_peak_mb": _status_mb("VmHWM") if reset else None}))  # fmt: skip


def peak_rss(model: str, num_clients: int, steps: int, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    out = subprocess.run([sys.executable, __file__, "--rss-child", model, str(num_clients), str(steps), *extra],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_report(model: str, threads: int | None) -> dict:
    small, large = peak_rss(model, 10, 2, threads), peak_rss(model, 1000, 2, threads)
    for key, what in (("peak_rss_mb", "process peak RSS"), ("run_peak_mb", "run peak RSS (after model load)")):
        if small.get(key) and large.get(key):
            print(f"[{model}] {what}: 10 clients {small[key]:.0f} MB, 1000 clients {large[key]:.0f} MB -> ratio "
                  f"{large[key] / small[key]:.3f} (target <= 1.10)", flush=True)  # fmt: skip
    return {"rss_10": small, "rss_1000": large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=list(MODELS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="local steps per client")
    parser.add_argument("--clients", type=int, default=4, help="clients per timed round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--only", choices=("time", "rss"), help="run only one of the two measurements")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    results = []
    for model in args.models:
        o = {"model": model}
        if args.only != "rss":
            o = overhead(model, args.reps, args.steps, args.clients)
            print(f"[{model}] time per client ({args.steps} steps, batch 4 x 64): engine {o['engine_s_per_client']:.2f} s, "
                  f"plain PEFT {o['plain_peft_s_per_client']:.2f} s -> ratio {o['ratio']:.3f} (target <= 1.10)", flush=True)  # fmt: skip
        if args.only != "time":
            o |= rss_report(model, args.threads)
        results.append(o)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Per-round cost of running a fedlora config on Flower, next to the in-process engine.

Four ways to run the same config (same plans, payloads and updates):

- ``engine``: ``fedlora run`` (one process, clients one after another);
- ``inprocess``: fedlora's ServerApp/ClientApp through an in-process Flower Grid (Flower's
  message objects and wire encoding, no SuperLink): the cost of fedlora's Flower layer itself;
- ``simulation``: Flower's own simulation runtime (``flwr run APP local``, Ray): ClientApps live in
  Ray actors across messages, as Flower users simulate;
- ``deployment``: a real SuperLink and one SuperNode per client on loopback (``--secure`` adds
  TLS and SuperNode authentication): what a user of ``flwr run`` pays, including Flower (1.41 and
  1.42) starting a fresh ClientApp process for every message.

Printed per mode: mean seconds per training round, the overhead next to ``engine`` (absolute and
ratio), the mean local-training seconds per client (the useful work), the seconds per round not
spent training (round minus the training on its critical path: the clients' sum in one process,
the slowest client when SuperNodes train in parallel), and for the deployment the ClientApp
processes seen and the model (re)load seconds per message. Evaluation is switched off so that
rounds are training only. On a shared machine, read the "not training" column: it is the
latency each mode adds, and it moves far less with CPU contention than training does.

    .venv/bin/python benchmarks/flower_overhead.py                       # built-in tiny config
    .venv/bin/python benchmarks/flower_overhead.py --config examples/quickstart.toml \\
        --set run.rounds=2 --set train.local_steps=4 --set data.num_clients=2 --set clients.rank_levels=[4,16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import sys
import time
import tomllib
from pathlib import Path

TINY = """
[run]
name = "flower-overhead"
rounds = 3
[model]
name = "tiny"
[data]
tasks = ["rt_sentiment", "headline_source", "convention_party"]
heldout_tasks = []
num_clients = 3
max_train_per_task = 16
max_eval_per_task = 2
[clients]
ranks = [2, 4, 8]
[strategy]
name = "flexlora"
[train]
local_steps = 3
batch_size = 4
max_length = 64
"""


def _config_text(args) -> str:
    from fedlora.config import apply_overrides, dumps_toml, parse_config, config_to_dict

    raw = tomllib.loads(Path(args.config).read_text() if args.config else TINY)
    raw = apply_overrides(raw, list(args.set) + ["eval.seen=false", "eval.heldout=false", "run.checkpoint_every=1000"])
    return dumps_toml(config_to_dict(parse_config(raw, "benchmark config")))


def _rounds(records, parallel: bool = False) -> tuple[list[float], list[float], list[dict], list[float]]:
    """Round seconds, client training seconds, client records, and per round the seconds not spent
    training (round minus the training on its critical path: the sum of the clients' training
    when they run one after another, the slowest client's when they run in parallel)."""
    rounds = [r for r in records if r.get("type") == "round"]
    clients = [r for r in records if r.get("type") == "client" and r.get("status") == "ok"]
    other = []
    for r in rounds:
        train = [c["seconds"] for c in clients if c["round"] == r["round"]]
        other.append(r["seconds"] - ((max(train) if parallel else sum(train)) if train else 0.0))
    return [r["seconds"] for r in rounds], [c["seconds"] for c in clients], clients, other


def run_engine(text: str, work: Path) -> dict:
    from fedlora.config import parse_config
    from fedlora.engine.run import Engine

    start = time.perf_counter()
    result = Engine(parse_config(tomllib.loads(text)), work / "engine").run()
    rounds, train, _, other = _rounds(result.records)
    return {"mode": "engine", "rounds": rounds, "train": train, "other": other, "wall": time.perf_counter() - start}


def run_inprocess(text: str, work: Path, nodes: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the in-process Grid is a test helper
    from flower_local_grid import run_in_process

    from fedlora.flower.client_app import app as client_app
    from fedlora.flower.server_app import app as server_app

    start = time.perf_counter()
    run_config = {"fedlora-config": text, "out-dir": str(work / "inprocess")}
    run_in_process(server_app, client_app, [{"partition-id": k, "num-partitions": nodes} for k in range(nodes)], run_config)
    rounds, train, _, other = _rounds(_read(work / "inprocess"))
    return {"mode": "inprocess", "rounds": rounds, "train": train, "other": other, "wall": time.perf_counter() - start}


def run_deployment(text: str, work: Path, nodes: int, secure: bool) -> dict:
    from fedlora.flower.app_dir import write_app
    from fedlora.flower.deploy import LocalFederation

    start = time.perf_counter()
    out = work / "deployment"
    app = write_app(text, work / "app", options={"out-dir": str(out), "round-timeout": 900, "query-timeout": 900})
    with LocalFederation(work / "flower", secure=secure) as fed:
        fed.start_superlink()
        for k in range(nodes):
            fed.start_supernode(k, {"partition-id": k, "num-partitions": nodes})
        fed.run_app(app, timeout=3600)
    rounds, train, clients, other = _rounds(_read(out), parallel=True)
    pids = {c["pid"] for c in clients if "pid" in c}
    loads = [c["model_load_seconds"] for c in clients if "model_load_seconds" in c]
    mode = "deployment" + (" (TLS+auth)" if secure else "")
    return {"mode": mode, "rounds": rounds, "train": train, "other": other, "wall": time.perf_counter() - start,
            "processes": len(pids), "messages": len(clients), "load": statistics.mean(loads) if loads else 0.0}  # fmt: skip


def run_simulation(text: str, work: Path, nodes: int) -> dict:
    """Flower's own simulation runtime (``flwr run APP local``, Ray actors that stay alive across messages)."""
    from fedlora.flower.app_dir import write_app
    from fedlora.flower.simulation import simulate_with_flower

    start = time.perf_counter()
    out = work / "simulation"
    app = write_app(text, work / "sim-app", options={"out-dir": str(out), "round-timeout": 900, "query-timeout": 900})
    simulate_with_flower(app, work / "sim", num_supernodes=nodes, timeout=3600)
    rounds, train, clients, other = _rounds(_read(out), parallel=True)
    pids = {c["pid"] for c in clients if "pid" in c}
    loads = [c["model_load_seconds"] for c in clients if "model_load_seconds" in c]
    return {"mode": "flower simulation (Ray)", "rounds": rounds, "train": train, "other": other, "wall": time.perf_counter() - start,
            "processes": len(pids), "messages": len(clients), "load": statistics.mean(loads) if loads else 0.0}  # fmt: skip


def _read(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _print(results: list[dict]) -> None:
    base = statistics.mean(results[0]["rounds"]) if results and results[0]["mode"] == "engine" else None
    print(f"{'mode':<26}{'s/round':>9}{'overhead':>10}{'ratio':>7}{'train s/client':>16}{'not training s/round':>22}"
          f"{'processes/messages':>20}{'load s/msg':>11}")  # fmt: skip
    for r in results:
        per_round = statistics.mean(r["rounds"])
        over = f"{per_round - base:+.2f}" if base is not None else "-"
        ratio = f"{per_round / base:.2f}" if base else "-"
        procs = f"{r['processes']}/{r['messages']}" if "processes" in r else "-"
        load = f"{r['load']:.2f}" if "load" in r else "-"
        print(f"{r['mode']:<26}{per_round:>9.2f}{over:>10}{ratio:>7}{statistics.mean(r['train']):>16.2f}"
              f"{statistics.mean(r['other']):>22.2f}{procs:>20}{load:>11}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="fedlora TOML config (default: a built-in tiny one)")
    p.add_argument("--set", action="append", default=[], help="config override section.key=value (repeatable)")
    p.add_argument("--modes", default="engine,inprocess,simulation,deployment",
                   help="comma-separated subset of engine,inprocess,simulation,deployment")
    p.add_argument("--secure", action="store_true", help="deployment with TLS and SuperNode authentication")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    text = _config_text(args)
    nodes = tomllib.loads(text)["data"]["num_clients"]
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="flower-overhead-") as tmp:
        work = Path(tmp)
        if "engine" in modes:
            results.append(run_engine(text, work))
        if "inprocess" in modes:
            results.append(run_inprocess(text, work, nodes))
        if "simulation" in modes:
            results.append(run_simulation(text, work, nodes))
        if "deployment" in modes:
            results.append(run_deployment(text, work, nodes, args.secure))
    print(f"{nodes} clients, {len(results[0]['rounds'])} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Per-round cost of running a fedlora config on Flower, next to the in-process engine.

Four ways to run the same config (same plans, payloads and updates):

- ``engine``: ``fedlora run`` (one process, clients one after another);
- ``inprocess``: fedlora's ServerApp/ClientApp through an in-process Flower Grid (Flower's
  message objects and wire encoding, no SuperLink): the cost of fedlora's Flower layer itself;
- ``simulation``: Flower's own simulation runtime (``flwr run APP local``, Ray): ClientApps live in
  Ray actors across messages, as Flower users simulate;
- ``deployment``: a real SuperLink and one SuperNode per client on loopback (``--secure`` adds
  TLS and SuperNode authentication): what a user of ``flwr run`` pays, including Flower (1.41 and
  1.42) starting a fresh ClientApp process for every message;
- ``message``: the cost of one deployment message where fedlora controls it, next to its floor, both
  in fresh Python processes, interleaved and repeated (``--repeats``). A *message* process does what
  Flower's ``flwr-clientapp`` does with one ``train`` message: start Python, import Flower's ClientApp
  runtime and the app (``fedlora.flower.client_app``), decode the message from Flower's protobuf
  encoding, load the base model and the node's data, attach the adapter, train, encode the reply.
  The *floor* process only imports torch, transformers and peft and loads the same model. Printed:
  each part's median seconds, the message's seconds outside training (wall minus the optimizer
  steps), and its ratio to the floor (target <= 1.3). The connection to the SuperNode (gRPC on
  loopback) is not in either; ``deployment`` measures it.

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
    .venv/bin/python benchmarks/flower_overhead.py --modes message --config examples/quickstart.toml --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
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


# ----------------------------------------------------------------------------- one message, next to its floor


def _message_inputs(text: str, work: Path) -> dict:
    """A ``train`` message for partition 0 (the largest rank of the config, starting factors as
    FlexLoRA sends them after round 1), encoded as Flower encodes a RecordDict, and the contexts."""
    import torch
    from flwr.common.serde import recorddict_to_proto

    from fedlora.allocation.plan import ClientPlan
    from fedlora.config import parse_config
    from fedlora.engine.build import TINY_MODEL, spec_of_section
    from fedlora.engine.plans import client_ranks
    from fedlora.engine.sampling import client_ids
    from fedlora.flower import serialization as S
    from fedlora.lora.factors import LoraFactors
    from fedlora.models import bundled_smollm2_path, resolve_dtype
    from fedlora.strategies.base import Payload

    cfg = parse_config(tomllib.loads(text), "benchmark config")
    if cfg.model.name == TINY_MODEL:
        raise SystemExit("--modes message needs a real model (its floor loads it): --config examples/quickstart.toml")
    spec = spec_of_section(cfg.model)
    rank = max(client_ranks(cfg))
    gen = torch.Generator().manual_seed(0)
    init = {m.name: LoraFactors(torch.randn(rank, m.d_in, generator=gen) * 0.01, torch.randn(m.d_out, rank, generator=gen) * 0.01,
                                2.0 * rank) for m in spec.modules}  # fmt: skip
    plan = ClientPlan(client_ids(cfg.data.num_clients)[0], {m.name: rank for m in spec.modules}, {m.name: 2.0 * rank for m in spec.modules})
    content = S.payload_to_content(Payload(plan, init=init, seed=1), server_round=2, client_seed=1)
    (work / "message.bin").write_bytes(recorddict_to_proto(content).SerializeToString())
    name = cfg.model.name
    model_path = str(bundled_smollm2_path()) if name.startswith("bundled:") else name
    return {"message": str(work / "message.bin"), "target_kinds": sorted({m.kind for m in spec.modules}), "run_config": {"fedlora-config": text, "out-dir": str(work / "message-run")},
            "node_config": {"partition-id": 0, "num-partitions": cfg.data.num_clients}, "model_path": model_path,
            "dtype": str(resolve_dtype(cfg.model.dtype)).removeprefix("torch."), "rank": rank}  # fmt: skip


def _child_message(inputs: dict, spawned: float) -> dict:
    """In a fresh process: what ``flwr-clientapp`` does with one train message, timed part by part,
    up to the encoded reply (the process's exit comes after the reply is sent)."""
    if inputs.get("hide_bitsandbytes"):
        sys.modules["bitsandbytes"] = None  # as if not installed: find_spec() is None, peft skips it
    parts = {"python start": time.time() - spawned}
    t = time.perf_counter()
    import flwr.supernode.runtime.run_clientapp  # noqa: F401  (what flwr-clientapp imports before the app)
    from flwr.app import Context, Message, RecordDict
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as flwr-clientapp sets them from the SuperNode
    parts["import flwr"] = time.perf_counter() - t
    t = time.perf_counter()
    from fedlora.flower.client_app import app
    from fedlora.flower.serialization import content_to_update

    parts["import app"] = time.perf_counter() - t
    if not inputs.get("hide_bitsandbytes") and importlib.util.find_spec("bitsandbytes") is not None:
        t = time.perf_counter()
        import bitsandbytes  # noqa: F401  (peft imports it at the first LoRA injection whenever it is installed)

        parts["import bitsandbytes (peft does)"] = time.perf_counter() - t
    t = time.perf_counter()
    content = recorddict_from_proto(ProtoRecordDict.FromString(Path(inputs["message"]).read_bytes()))
    message = Message(content, dst_node_id=1, message_type="train")
    parts["decode message"] = time.perf_counter() - t
    context = Context(run_id=1, node_id=1, node_config=inputs["node_config"], state=RecordDict(), run_config=inputs["run_config"])
    t = time.perf_counter()
    reply = app(message=message, context=context)
    handler = time.perf_counter() - t
    if reply.has_error():
        raise SystemExit(f"the ClientApp replied with an error: {reply.error}")
    metrics = content_to_update(reply.content, "client").metrics
    parts["load model and data"] = float(metrics.get("model_load_seconds", 0.0))
    parts["attach adapter"] = float(metrics.get("setup_seconds", 0.0))
    parts["training steps"] = float(metrics.get("seconds", 0.0)) - parts["attach adapter"]
    parts["rest of handler (imports on first use)"] = handler - parts["load model and data"] - float(metrics.get("seconds", 0.0))
    t = time.perf_counter()
    recorddict_to_proto(reply.content).SerializeToString()
    parts["encode reply"] = time.perf_counter() - t
    return {"parts": parts, "done": time.time() - spawned}


def _child_floor(inputs: dict, spawned: float) -> dict:
    """In a fresh process: only import torch, transformers and peft, and load the same model."""
    parts = {"python start": time.time() - spawned}
    t = time.perf_counter()
    import peft  # noqa: F401
    import torch
    import transformers

    parts["import torch, transformers, peft"] = time.perf_counter() - t
    t = time.perf_counter()
    transformers.AutoModelForCausalLM.from_pretrained(inputs["model_path"], dtype=getattr(torch, inputs["dtype"]))
    parts["load model"] = time.perf_counter() - t
    return {"parts": parts, "done": time.time() - spawned}


def _child_client_floor(inputs: dict, spawned: float) -> dict:
    """The floor plus what any LoRA client on Flower must also do: import Flower's ClientApp runtime,
    load the tokenizer, and put LoRA layers of the message's rank on the same modules with PEFT."""
    if inputs.get("hide_bitsandbytes"):
        sys.modules["bitsandbytes"] = None
    parts = {"python start": time.time() - spawned}
    t = time.perf_counter()
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    parts["import flwr"] = time.perf_counter() - t
    t = time.perf_counter()
    import peft
    import torch
    import transformers

    parts["import torch, transformers, peft"] = time.perf_counter() - t
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(inputs["model_path"], dtype=getattr(torch, inputs["dtype"]))
    parts["load model"] = time.perf_counter() - t
    t = time.perf_counter()
    transformers.AutoTokenizer.from_pretrained(inputs["model_path"])
    parts["load tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    config = peft.LoraConfig(r=inputs["rank"], lora_alpha=2 * inputs["rank"], target_modules=list(inputs["target_kinds"]))
    peft.inject_adapter_in_model(config, model)
    parts["inject LoRA (PEFT)"] = time.perf_counter() - t
    return {"parts": parts, "done": time.time() - spawned}


def _spawn(kind: str, inputs_path: Path) -> dict:
    import subprocess

    spawned = time.time()
    child = kind.split(",")[0]
    proc = subprocess.run([sys.executable, __file__, "--child", child, str(inputs_path), repr(spawned)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the {kind} process failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = time.time() - spawned
    return out


MESSAGE_KINDS = {"message": "a train message", "floor": "import torch, transformers, peft; load the model",
                 "client floor": "the floor + import flwr, load the tokenizer, inject LoRA with PEFT",
                 "message, no bitsandbytes": "a train message, bitsandbytes hidden as in the base install",
                 "client floor, no bitsandbytes": "the client floor, bitsandbytes hidden"}  # fmt: skip


def run_message(text: str, work: Path, repeats: int) -> dict:
    """``repeats`` rounds of (message, floor[, message without bitsandbytes]), the order rotating each
    round; each process's time to its result (reply encoded, model loaded), medians and ratios."""
    inputs = _message_inputs(text, work)
    (work / "inputs.json").write_text(json.dumps(inputs))
    (work / "inputs-nobnb.json").write_text(json.dumps({**inputs, "hide_bitsandbytes": True}))
    kinds = ["message", "floor", "client floor"]
    if importlib.util.find_spec("bitsandbytes"):
        kinds += ["message, no bitsandbytes", "client floor, no bitsandbytes"]
    path = {k: work / ("inputs-nobnb.json" if "no bitsandbytes" in k else "inputs.json") for k in kinds}
    _spawn("message", path["message"])  # warm-up: the OS file cache and the model's on-disk cache
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(repeats):
        for kind in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
            runs[kind].append(_spawn(kind, path[kind]))
    floors = [r["done"] for r in runs["floor"]]
    outside = {k: [r["done"] - r["parts"]["training steps"] for r in runs[k]] for k in kinds if k.startswith("message")}
    client_floor = {k: [r["done"] for r in runs[k.replace("message", "client floor")]] for k in outside}
    return {"mode": "message", "rank": inputs["rank"], "model": inputs["model_path"], "repeats": repeats, "runs": runs,
            "floor": floors, "outside_training": outside,
            "ratios": {k: [o / f for o, f in zip(v, floors)] for k, v in outside.items()},
            "client_floor_ratios": {k: [o / f for o, f in zip(v, client_floor[k])] for k, v in outside.items()}}  # fmt: skip


def _print_message(r: dict) -> None:
    med = statistics.median
    print(f"one train message (rank {r['rank']}, {r['model']}): {r['repeats']} rounds of fresh processes, order rotating; "
          "seconds from process start to the result (reply encoded / model loaded), medians:")  # fmt: skip
    for kind, runs in r["runs"].items():
        print(f"  {kind} ({MESSAGE_KINDS[kind]}): {med(x['done'] for x in runs):.2f} s (process exit after it: "
              f"{med(x['wall'] - x['done'] for x in runs):.2f} s)")  # fmt: skip
        for part in runs[0]["parts"]:
            print(f"    {part:<40}{med(x['parts'][part] for x in runs):8.2f}")
    print(f"  floor: {med(r['floor']):.2f} s")
    for kind, outside in r["outside_training"].items():
        ratios = r["ratios"][kind]
        client = r["client_floor_ratios"][kind]
        print(f"  {kind}: outside training {med(outside):.2f} s; ratio to the floor {med(ratios):.2f} "
              f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; target <= 1.3); "
              f"to the client floor {med(client):.2f} ({', '.join(f'{x:.2f}' for x in client)})")
    weights = sum(f.stat().st_size for f in Path(r["model"]).glob("*.safetensors")) if Path(r["model"]).is_dir() else 0
    if weights:
        load = med(x["parts"]["load model"] for x in r["runs"]["floor"])
        bandwidth = weights / load
        fixed = med(r["outside_training"]["message"]) - load
        print(f"  estimate, not a measurement: the model loads at {bandwidth / 1e9:.2f} GB/s here ({weights / 1e6:.0f} MB in {load:.2f} s, "
              f"warm page cache); the rest of a message outside training is {fixed:.1f} s; so per message about "
              + ", ".join(f"{fixed + size / bandwidth:.0f} s for a {name} model in bf16 ({size / 1e9:.0f} GB)"
                          for name, size in (("1B", 2.0e9), ("7B", 14.0e9))) + " (plus reading the weights from disk when not cached)")  # fmt: skip


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
                   help="comma-separated subset of engine,inprocess,simulation,deployment,message")
    p.add_argument("--repeats", type=int, default=5, help="message mode: pairs of (message, floor) processes")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--secure", action="store_true", help="deployment with TLS and SuperNode authentication")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.child:
        kind, inputs, spawned = args.child
        child = {"message": _child_message, "floor": _child_floor, "client floor": _child_client_floor}[kind]
        print(json.dumps(child(json.loads(Path(inputs).read_text()), float(spawned))))
        return
    text = _config_text(args)
    nodes = tomllib.loads(text)["data"]["num_clients"]
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="flower-overhead-") as tmp:  # noqa: SIM117
        work = Path(tmp)
        if "engine" in modes:
            results.append(run_engine(text, work))
        if "inprocess" in modes:
            results.append(run_inprocess(text, work, nodes))
        if "simulation" in modes:
            results.append(run_simulation(text, work, nodes))
        if "deployment" in modes:
            results.append(run_deployment(text, work, nodes, args.secure))
        message = run_message(text, work, args.repeats) if "message" in modes else None
    if message:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        _print_message(message)
        if args.json:
            Path(args.json).write_text(json.dumps(results + [message], indent=2))
        if not results:
            return
    print(f"{nodes} clients, {len(results[0]['rounds'])} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

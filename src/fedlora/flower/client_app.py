"""fedlora's Flower ClientApp: fedlora's ``LocalTrainer`` on a SuperNode's local data.

Three message types:

- ``query.resources``: the node's client id, memory budget, device, data sizes, model shapes
  and, when the plans need it (Fed-pilot), its local module importance;
- ``train``: one payload (plan, starting factors, seed) in, one update out;
- ``evaluate``: the global adapter in, metrics per split (``eval``, ``heldout``) out, on the
  node's shard of the federation's evaluation sets (or on its own eval data).

The node's ``--node-config`` says which data it holds (``partition-id`` and ``num-partitions``
of the configured dataset, or ``data-path`` to a local JSONL file, ``eval-data-path``
optionally), its ``memory-gb`` budget, and optionally ``client-id`` and ``device``.

The base model is loaded once per process and cached at module level (:data:`RUNTIMES`).
Flower 1.41's SuperNode starts a new ClientApp process for every message, so in a deployment
the cache lives one message and what saves the reload is the on-disk model cache
(``fedlora.models``: the bundled model is converted once to safetensors, then loads in ~0.1 s).
Every reply reports ``pid``, ``process_messages`` and ``model_load_seconds`` so this is measured,
not assumed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.flower import serialization as S
from fedlora.flower.recipe import NodeData, NodeRecipe, recipes_from_run_config
from fedlora.flower.resources import (
    NodeResources,
    budget_from_node_config,
    measure_memory,
    resources_to_content,
    spec_from_json,
    spec_to_json,
)

__all__ = ["app", "make_client_app", "NodeRuntime", "RUNTIMES", "PROCESS_STATS"]

RecipeFactory = Callable[[Mapping[str, Any]], tuple[Any, NodeRecipe]]


@dataclass
class NodeRuntime:
    """What a node keeps between messages of one process: model, trainer and local data."""

    model: Any
    tokenizer: Any
    trainer: Any
    data: NodeData
    spec_json: str
    eval_kwargs: dict[str, Any]
    load_seconds: float


RUNTIMES: dict[str, NodeRuntime] = {}
"""Module-level cache: (recipe, node config) key -> runtime. One base model per process."""

PROCESS_STATS = {"pid": os.getpid(), "messages": 0}


def node_runtime(context: Context, recipes: RecipeFactory = recipes_from_run_config) -> tuple[NodeRuntime, float]:
    """The cached runtime for this run and node, building it on first use; ``(runtime, load seconds now)``."""
    _, recipe = recipes(context.run_config)
    key = f"{recipe.cache_key}|{sorted(dict(context.node_config).items())!r}"
    if key in RUNTIMES:
        return RUNTIMES[key], 0.0
    start = time.perf_counter()
    from fedlora.client.trainer import LocalTrainer
    from fedlora.models import DEFAULT_TARGETS, model_spec

    model, tokenizer = recipe.load_model()
    spec = model_spec(model, recipe.target_kinds or DEFAULT_TARGETS)
    data = recipe.node_data(dict(context.node_config))
    trainer = LocalTrainer(model, tokenizer, recipe.train_config)
    runtime = NodeRuntime(model, tokenizer, trainer, data, spec_to_json(spec), dict(recipe.eval_kwargs), 0.0)
    runtime.load_seconds = time.perf_counter() - start
    RUNTIMES.clear()  # one base model per process
    RUNTIMES[key] = runtime
    return runtime, runtime.load_seconds


def _process_metrics(load_seconds: float) -> dict[str, float]:
    PROCESS_STATS["messages"] += 1
    return {"pid": float(PROCESS_STATS["pid"]), "process_messages": float(PROCESS_STATS["messages"]), "model_load_seconds": load_seconds}


def _resources(rt: NodeRuntime, context: Context, recipe: NodeRecipe) -> NodeResources:
    device = next(rt.model.parameters()).device
    free = measure_memory(device)
    budget, source = budget_from_node_config(context.node_config, free)
    importance = ""
    if recipe.importance is not None:
        scores = recipe.importance(rt.model, rt.tokenizer, rt.data.train, spec_from_json(rt.spec_json), rt.data.client_id)
        importance = json.dumps({m: float(v) for m, v in scores.items()}, sort_keys=True)
    d = rt.data
    return NodeResources(d.client_id, str(device), budget, source, free, len(d.train), len(d.eval) + len(d.heldout), rt.spec_json, importance)


def _evaluate(rt: NodeRuntime, task: S.EvalInstruction) -> RecordDict:
    """Metrics per split (``eval``, ``heldout``) of the global adapter on this node's share."""
    from fedlora.eval import evaluate

    content = RecordDict()
    for split, examples in (("eval", rt.data.eval), ("heldout", rt.data.heldout)):
        if rt.data.eval_is_global:
            examples = examples[task.shard :: task.num_shards]
        if not examples:
            continue
        start = time.perf_counter()
        with rt.trainer.use_adapter(task.adapter or None) as model:
            metrics = evaluate(model, rt.tokenizer, examples, **rt.eval_kwargs)
        metrics["seconds"] = time.perf_counter() - start
        content[f"{S.METRICS}.{split}"] = S.metrics_to_record(metrics)
    return content


def make_client_app(recipes: RecipeFactory = recipes_from_run_config) -> ClientApp:
    """A ClientApp whose recipes come from ``recipes(run_config)`` (default: the fedlora config)."""
    app = ClientApp()

    @app.query("resources")
    def query_resources(msg: Message, context: Context) -> Message:
        rt, load = node_runtime(context, recipes)
        content = resources_to_content(_resources(rt, context, recipes(context.run_config)[1]))
        content[S.METRICS] = MetricRecord(_process_metrics(load))
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rt, load = node_runtime(context, recipes)
        task = S.content_to_payload(msg.content)
        if task.payload.plan.client_id != rt.data.client_id:
            raise ValueError(f"this node plays client {rt.data.client_id!r} but was sent the plan of {task.payload.plan.client_id!r}")
        update = rt.trainer.train(task.payload, rt.data.train, client_seed=task.client_seed)
        update.metrics.update(_process_metrics(load))
        return Message(S.update_to_content(update), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        rt, load = node_runtime(context, recipes)
        content = _evaluate(rt, S.content_to_global(msg.content))
        content[S.METRICS] = MetricRecord(_process_metrics(load))
        return Message(content, reply_to=msg)

    return app


app = make_client_app()
"""The ClientApp that ``fedlora flower app`` folders point Flower at."""

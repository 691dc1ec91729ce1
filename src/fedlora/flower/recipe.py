"""What a Flower run trains, as two small recipes built from the Flower run config.

The server side (:class:`ServerRecipe`) says how many rounds, which clients, which strategy and
plans, how clients are sampled and seeded. The node side (:class:`NodeRecipe`) says which base
model to load, how to train, and which local data a node holds given its ``--node-config``.
:func:`fedlora.flower.from_config.recipes_from_fedlora_config` builds both from the fedlora TOML
config embedded in the run config (``fedlora-config``) with the in-process engine's own
functions, so a Flower run and ``fedlora run`` of the same config train the same thing.

``fedlora-recipe = "package.module:function"`` in the run config swaps in another builder
(``function(run_config) -> (ServerRecipe, NodeRecipe)``), e.g. for custom data loading;
:mod:`fedlora.flower.smoke` is one.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.modelspec import ModelSpec
from fedlora.strategies.base import Strategy

__all__ = ["Planner", "StaticPlanner", "ServerRecipe", "NodeRecipe", "NodeData", "recipes_from_run_config", "DEFAULT_BUILDER"]

DEFAULT_BUILDER = "fedlora.flower.from_config:recipes_from_fedlora_config"


class Planner(Protocol):
    """Plans per round (the interface of :class:`fedlora.engine.plans.Planner`)."""

    def plans(self, server_round: int, ids: Sequence[str], strategy: Any = None) -> dict[str, ClientPlan]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class StaticPlanner:
    """The same plan for a client every round."""

    fixed: Mapping[str, ClientPlan]

    def plans(self, server_round: int, ids: Sequence[str], strategy: Any = None) -> dict[str, ClientPlan]:
        return {cid: self.fixed[cid] for cid in ids}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class ServerRecipe:
    """Server side of a run.

    Attributes:
        num_rounds: rounds to run.
        client_ids: every configured client, in order (node ``partition-id=k`` plays ``client_ids[k]``).
        make_strategy: ``spec -> Strategy`` (the spec comes from the nodes' resource answers).
        make_planner: ``(spec, resources by client id) -> Planner``. The resources carry each
            node's memory budget and, for Fed-pilot, its local module importance.
        sample: ``(round, available client ids) -> clients of the round``.
        client_seed: ``(round, client id) -> seed`` of that client's local training.
        eval_every: evaluate after every this many rounds (round 0 and the last always; 0: only those).
        checkpoint_every: checkpoint every this many rounds (the last always).
        model_name: base model id or path recorded in the exported PEFT adapter.
        config: the fedlora config as a dict, checked against the checkpoint's on resume.
        norm_bound: outlier bound of :func:`fedlora.strategies.guard.guarded_aggregate` (0 disables).
    """

    num_rounds: int
    client_ids: tuple[str, ...]
    make_strategy: Callable[[ModelSpec], Strategy]
    make_planner: Callable[[ModelSpec, Mapping[str, Any]], Planner]
    sample: Callable[[int, Sequence[str]], Sequence[str]]
    client_seed: Callable[[int, str], int]
    eval_every: int = 1
    checkpoint_every: int = 1
    model_name: str | None = None
    config: dict | None = None
    norm_bound: float = 100.0


@dataclass
class NodeData:
    """A node's data.

    Attributes:
        client_id: the fedlora client this node plays.
        train: its training examples.
        eval, heldout: evaluation examples (seen tasks, unseen tasks).
        eval_is_global: ``eval``/``heldout`` are the federation's shared evaluation sets (every
            node built them from the config): the server gives each node a shard. Otherwise they
            are the node's own and evaluated whole.
    """

    client_id: str
    train: list
    eval: list = field(default_factory=list)
    heldout: list = field(default_factory=list)
    eval_is_global: bool = False


@dataclass
class NodeRecipe:
    """Node side of a run.

    Attributes:
        load_model: ``() -> (model, tokenizer)``; called once per ClientApp process.
        train_config: a :class:`fedlora.client.TrainConfig`.
        node_data: ``node_config -> NodeData``.
        eval_kwargs: keyword arguments of :func:`fedlora.eval.evaluate`.
        target_kinds: module kinds the model spec lists (``q_proj``, ...).
        importance: ``(model, tokenizer, examples, spec, client id) -> module scores``, when the
            plans need each client's local module importance (Fed-pilot); else None.
        cache_key: identifies model + data settings; equal keys share a cached runtime.
    """

    load_model: Callable[[], tuple[Any, Any]]
    train_config: Any
    node_data: Callable[[Mapping[str, Any]], NodeData]
    eval_kwargs: dict[str, Any] = field(default_factory=dict)
    target_kinds: tuple[str, ...] | None = None
    importance: Callable[..., dict[str, float]] | None = None
    cache_key: str = ""


def recipes_from_run_config(run_config: Mapping[str, Any]) -> tuple[ServerRecipe, NodeRecipe]:
    """Build both recipes with the builder named by ``fedlora-recipe`` (default: the fedlora config)."""
    ref = str(run_config.get("fedlora-recipe") or DEFAULT_BUILDER)
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"fedlora-recipe = {ref!r} must look like 'package.module:function'")
    builder = getattr(importlib.import_module(module_name), attr)
    server, node = builder(run_config)
    if not node.cache_key:
        node.cache_key = hashlib.sha256(repr(sorted(run_config.items())).encode()).hexdigest()[:16]
    return server, node

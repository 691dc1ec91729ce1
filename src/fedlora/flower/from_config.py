"""Recipes from a fedlora TOML config, with the in-process engine's own builders.

Everything that decides *what* is trained comes from :mod:`fedlora.engine` (client ids, data
split and partition, ranks and plans, sampling, client seeds, strategy, train and eval settings),
so ``fedlora run CONFIG`` and a Flower run of the same config make the same plans, send the same
payloads and aggregate the same updates.

Run-config keys read here: ``fedlora-config`` (the TOML text), ``fedlora-set`` (overrides
``"train.lr=1e-3; run.rounds=5"``) and ``plans-from``: ``"config"`` (ranks / budgets as the config
says, as ``fedlora run``) or ``"resources"`` (each node's reported memory budget: FlexLoRA gets
the largest of ``clients.rank_levels`` whose predicted training peak fits, Fed-pilot gets the
budget itself).

Node configs: ``partition-id`` (and ``num-partitions``, which must equal ``data.num_clients``)
picks the node's share of the config's dataset; ``data-path`` (and ``eval-data-path``) reads the
node's own JSONL/HF data instead; ``client-id`` names the client explicitly.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from typing import Any, Mapping, Sequence

from fedlora.config import Config, apply_overrides, config_to_dict, parse_config, resolved_allocation
from fedlora.engine import build
from fedlora.engine.plans import Planner, client_budgets, client_ranks, memory_model_kwargs
from fedlora.engine.sampling import client_ids as make_client_ids
from fedlora.engine.sampling import client_seed, clients_per_round, sample_clients
from fedlora.flower.recipe import NodeData, NodeRecipe, ServerRecipe
from fedlora.modelspec import ModelSpec

__all__ = ["recipes_from_fedlora_config", "config_from_run_config", "rank_for_budget", "PLANS_FROM"]

PLANS_FROM = ("config", "resources")


@functools.lru_cache(maxsize=8)
def _parse(text: str, overrides: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"run config fedlora-config is not valid TOML: {err}") from None
    items = [item.strip() for item in overrides.split(";") if item.strip()]
    return parse_config(apply_overrides(raw, items), "fedlora-config")


def config_from_run_config(run_config: Mapping[str, Any]) -> Config:
    """The validated fedlora :class:`~fedlora.config.Config` embedded in a Flower run config."""
    text = run_config.get("fedlora-config")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the Flower run config has no fedlora-config; write the app with `fedlora flower app CONFIG.toml --out DIR`")
    return _parse(text, str(run_config.get("fedlora-set", "")))


def rank_for_budget(cfg: Config, spec: ModelSpec, budget_bytes: int) -> int:
    """The largest of ``clients.rank_levels`` whose predicted training peak (every targeted
    module at that rank, ``allocation.memory.MemoryModel``) fits ``budget_bytes``; the smallest
    level when none fits."""
    from fedlora.allocation.memory import MemoryModel

    model = MemoryModel(spec, **memory_model_kwargs(cfg, spec))
    kinds = set(cfg.model.target_modules)
    modules = [m for m in spec.modules if m.kind in kinds]
    levels = sorted(set(cfg.clients.rank_levels))
    fitting = [r for r in levels if model.peak_bytes({m.name: min(r, m.d_in, m.d_out) for m in modules}) <= budget_bytes]
    return fitting[-1] if fitting else levels[0]


def _with_resources(cfg: Config, spec: ModelSpec, ids: Sequence[str], resources: Mapping[str, Any]) -> Config:
    """``cfg`` with ``clients.ranks`` (or ``clients.budgets``) taken from the nodes' budgets."""
    c = cfg.clients
    if resolved_allocation(cfg) == "fedpilot":
        budgets = client_budgets(cfg)
        values = [resources[cid].budget_bytes if cid in resources else budgets[i] for i, cid in enumerate(ids)]
        return cfg.replace(clients=dataclasses.replace(c, budgets=values))
    ranks = client_ranks(cfg)
    values = [rank_for_budget(cfg, spec, resources[cid].budget_bytes) if cid in resources else ranks[i] for i, cid in enumerate(ids)]
    return cfg.replace(clients=dataclasses.replace(c, ranks=values))


def _make_planner(cfg: Config, ids: tuple[str, ...], plans_from: str):
    def make(spec: ModelSpec, resources: Mapping[str, Any]) -> Planner:
        planner = Planner(_with_resources(cfg, spec, ids, resources) if plans_from == "resources" else cfg, spec, ids)
        if planner.allocation == "fedpilot":
            scores = {cid: (resources[cid].importance if cid in resources else {}) for cid in ids}
            planner.load_state_dict({"local_importance": scores})
        return planner

    return make


def _node_data(cfg: Config, ids: tuple[str, ...]):
    def load(node_config: Mapping[str, Any]) -> NodeData:
        from fedlora.engine.data import build_data, load_examples

        cid = _client_of(node_config, ids, cfg.data.num_clients)
        if node_config.get("data-path"):
            train = load_examples(cfg.data, str(node_config["data-path"]))
            eval_path = node_config.get("eval-data-path")
            return NodeData(cid, train, load_examples(cfg.data, str(eval_path)) if eval_path else [], [], eval_is_global=False)
        data = build_data(cfg)
        evals = data.eval if cfg.eval.seen else []
        return NodeData(cid, data.clients[cid], list(evals), list(data.heldout) if cfg.eval.heldout else [], eval_is_global=True)

    return load


def _client_of(node_config: Mapping[str, Any], ids: tuple[str, ...], num_clients: int) -> str:
    """The client a node plays: ``client-id``, else ``ids[partition-id]``."""
    if node_config.get("client-id"):
        cid = str(node_config["client-id"])
        if cid not in ids:
            raise ValueError(f"node config client-id = {cid!r} is not a client of the config ({ids[0]} ... {ids[-1]})")
        return cid
    k, n = node_config.get("partition-id"), node_config.get("num-partitions", num_clients)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_clients:
        raise ValueError(f"node config partition-id = {k!r}: give an int in [0, {num_clients}) (data.num_clients = {num_clients}), "
                         "e.g. flower-supernode --node-config 'partition-id=0 num-partitions=%d'" % num_clients)  # fmt: skip
    if n != num_clients:
        raise ValueError(f"node config num-partitions = {n!r} but the config has data.num_clients = {num_clients}; they must agree")
    return ids[k]


def recipes_from_fedlora_config(run_config: Mapping[str, Any]) -> tuple[ServerRecipe, NodeRecipe]:
    """Both recipes of the fedlora config in ``run_config`` (see the module docstring)."""
    cfg = config_from_run_config(run_config)
    if cfg.run.eval_last:
        raise ValueError(f"run.eval_last = {cfg.run.eval_last} is an option of the in-process engine (bench endpoints); "
                         "a Flower run evaluates every run.eval_every rounds: set run.eval_last = 0 and choose run.eval_every")
    plans_from = str(run_config.get("plans-from", "config"))
    if plans_from not in PLANS_FROM:
        raise ValueError(f"plans-from = {plans_from!r} must be one of {PLANS_FROM}")
    ids = make_client_ids(cfg.data.num_clients)
    per_round = clients_per_round(cfg.clients.clients_per_round, len(ids))
    seed = cfg.run.seed
    server = ServerRecipe(
        num_rounds=cfg.run.rounds, client_ids=ids,
        make_strategy=lambda spec: build.build_strategy(cfg, spec), make_planner=_make_planner(cfg, ids, plans_from),
        sample=lambda rnd, available: sample_clients(list(available), rnd, min(per_round, len(available)), seed),
        client_seed=lambda rnd, cid: client_seed(seed, rnd, cid),
        eval_every=cfg.run.eval_every, checkpoint_every=cfg.run.checkpoint_every,
        model_name=None if cfg.model.name == build.TINY_MODEL else cfg.model.name, config=config_to_dict(cfg),
        norm_bound=cfg.strategy.norm_bound,
    )  # fmt: skip
    importance = None
    if resolved_allocation(cfg) == "fedpilot":
        from fedlora.engine.importance import client_importance

        def importance(model, tokenizer, examples, spec, cid):
            return client_importance(model, tokenizer, examples, cfg, spec, cid)

    node = NodeRecipe(
        load_model=lambda: build.load_base_model(cfg.model), train_config=build.build_train_config(cfg),
        node_data=_node_data(cfg, ids), eval_kwargs=build.eval_kwargs(cfg), target_kinds=tuple(cfg.model.target_modules),
        importance=importance,
    )  # fmt: skip
    return server, node

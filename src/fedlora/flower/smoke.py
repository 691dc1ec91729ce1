"""A self-contained smoke recipe: a tiny random Llama and a few synthetic examples per client.

It checks a Flower set-up (TLS, SuperNode authentication, node configs, timeouts) end to end in
seconds, with no model download and no dataset, before a real run. Select it with
``fedlora-recipe = "fedlora.flower.smoke:recipes"`` in the run config (``fedlora flower local
--smoke`` does). Settings, all optional run-config keys: ``smoke-rounds`` (2), ``smoke-clients``
(2), ``smoke-strategy`` (``"flexlora"``), ``smoke-ranks`` (``"2,4,8"``: client k gets rank
``ranks[k % len]``), ``smoke-seed`` (0), ``smoke-eval-every`` (1; 0: round 0 and the last only).
"""

from __future__ import annotations

from typing import Any, Mapping

from fedlora.allocation.plan import ClientPlan
from fedlora.flower.recipe import NodeData, NodeRecipe, ServerRecipe, StaticPlanner

__all__ = ["recipes", "smoke_examples", "smoke_plans", "smoke_client_seed", "SMOKE_TARGETS", "smoke_train_config"]

SMOKE_TARGETS = ("q_proj", "v_proj")
_WORDS = ("red", "green", "blue", "amber", "violet", "teal")


def smoke_train_config():
    """Two local steps of batch 2 at lr 1e-2 (tiny model, loss visibly moves)."""
    from fedlora.client.trainer import TrainConfig

    return TrainConfig(local_steps=2, batch_size=2, lr=1e-2, max_length=48)


def smoke_examples(k: int) -> list:
    """Client ``k``'s ``3 + k`` synthetic examples (different sizes, so weights differ)."""
    from fedlora.data.example import Example

    return [Example("Name a colour.", f"client {k} item {i}", _WORDS[(k + i) % len(_WORDS)], f"task{k}") for i in range(3 + k)]


def smoke_plans(spec, ranks: tuple[int, ...], num_clients: int) -> dict[str, ClientPlan]:
    """Client k adapts every module at rank ``ranks[k % len(ranks)]`` with alpha = 2 * rank."""
    modules = [m.name for m in spec.modules]
    return {f"client-{k}": ClientPlan.uniform(f"client-{k}", modules, ranks[k % len(ranks)], 2.0 * ranks[k % len(ranks)]) for k in range(num_clients)}


def smoke_client_seed(seed: int, rnd: int, cid: str) -> int:
    return seed * 1000 + rnd * 10 + int(cid.split("-")[1])


def recipes(run_config: Mapping[str, Any]) -> tuple[ServerRecipe, NodeRecipe]:
    """The smoke recipes for ``run_config`` (see the module docstring for its keys)."""
    from fedlora.strategies.registry import make_strategy
    from fedlora.testing import tiny_llama

    rounds = int(run_config.get("smoke-rounds", 2))
    clients = int(run_config.get("smoke-clients", 2))
    name = str(run_config.get("smoke-strategy", "flexlora"))
    ranks = tuple(int(r) for r in str(run_config.get("smoke-ranks", "2,4,8")).split(","))
    seed = int(run_config.get("smoke-seed", 0))
    server = ServerRecipe(
        num_rounds=rounds,
        client_ids=tuple(f"client-{k}" for k in range(clients)),
        make_strategy=lambda spec: make_strategy(name, seed=seed, shapes=spec),
        make_planner=lambda spec, _resources: StaticPlanner(smoke_plans(spec, ranks, clients)),
        sample=lambda rnd, available: list(available),
        client_seed=lambda rnd, cid: smoke_client_seed(seed, rnd, cid),
        eval_every=int(run_config.get("smoke-eval-every", 1)),
    )

    def node_data(node_config: Mapping[str, Any]) -> NodeData:
        k = int(node_config.get("partition-id", 0))
        return NodeData(f"client-{k}", smoke_examples(k), smoke_examples(k)[:2])

    node = NodeRecipe(
        load_model=lambda: tiny_llama(seed=0), train_config=smoke_train_config(), node_data=node_data,
        eval_kwargs={"generate": False, "batch_size": 2, "max_length": 48}, target_kinds=SMOKE_TARGETS,
        cache_key=f"smoke-{name}-{clients}-{ranks}-{seed}",
    )  # fmt: skip
    return server, node

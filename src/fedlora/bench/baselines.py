"""Baseline allocations the benches compare against, with the same memory model and budgets as Fed-pilot.

* ``drop-small``: only the clients that can afford the full configuration take part. With ranks
  (FlexLoRA's bucket-effect baseline "FedIT at the maximum rank, small clients dropped"): the
  clients at the largest rank train every module at that rank. With memory budgets (Fed-pilot's
  baseline (a)): the clients whose budget fits full LoRA at ``clients.fedpilot_rank`` train it.
  Each round samples as many clients as the full federation does (``clients.clients_per_round`` of
  *all* clients), from the kept ones, so the baseline trains as many steps as the methods it is
  compared with; fewer kept clients than that is refused.
* ``drop-small-fraction``: the same kept clients, but ``clients.clients_per_round`` applies to the
  kept clients only, so a round trains fewer clients than the full federation's (the behaviour of
  fedlora's benches before 2026-12; it confounds "dropped clients" with "fewer training steps").
* ``last-layers`` (baseline (b)): walk the modules from the output down (layer by layer, the
  last module of a layer first) and train the longest suffix whose predicted peak fits the budget.
* ``centralized``: every client's training data pooled on one client ("pooled"), which trains at the
  largest client rank (every module) for ``clients_per_round x local_steps`` steps per round, so the
  total number of steps equals the federation's (the ceiling of every federated comparison).
* ``no-train``: the base model, evaluated once (round 0), no training (the starting point).
* ``random-modules`` (baseline (c), FedRA-like): add modules in a random order (re-drawn every round,
  seeded by ``(seed, round, client)``), keeping each one that still fits the budget.

Plans follow Fed-pilot's convention (``allocation.planner.plans_from_selections``): every module
carries an adapter at ``fedpilot_rank``, the selection is ``trainable``, the others are applied
frozen, and the memory model charges the frozen adapters. The pure functions import torch only;
:func:`install_plan_mode` plugs a mode into an engine that is set up (``Engine.setup()``).
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from fedlora.allocation.knapsack import BudgetTooSmallError, Selection
from fedlora.allocation.memory import MemoryModel
from fedlora.allocation.plan import ClientPlan
from fedlora.allocation.planner import plan_flexlora, plans_from_selections
from fedlora.modelspec import ModelSpec

__all__ = ["PLAN_MODES", "REFERENCE_PLANS", "full_lora_fits", "select_last_layers", "select_random_modules", "drop_small_by_rank",
           "drop_small_by_budget", "BaselinePlanner", "PooledPlanner", "install_plan_mode"]  # fmt: skip

PLAN_MODES = ("drop-small", "last-layers", "random-modules", "drop-small-fraction", "centralized", "no-train")
"""Bench-side allocations. ``centralized`` and ``no-train`` are the reference points of every comparison:
all clients' data pooled on one client at the largest rank with the federation's total local steps (the
ceiling), and the untrained base model (round 0 only)."""

REFERENCE_PLANS = ("no-train", "centralized")
"""Plans whose cells do not depend on the resource distribution (no client ranks): run under one, they pair with every one."""

_KIND_ORDER = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3, "gate_proj": 4, "up_proj": 5, "down_proj": 6}


def _execution_order(spec: ModelSpec) -> list[str]:
    """Module names from the embeddings to the output (layer, then position within the layer)."""
    return [m.name for m in sorted(spec.modules, key=lambda m: (m.layer, _KIND_ORDER.get(m.kind, 7), m.name))]


def _fits(mm: MemoryModel, chosen: Mapping[str, int], frozen: Mapping[str, int], budget: int) -> int | None:
    peak = mm.peak_bytes(chosen, frozen=frozen)
    return peak if peak <= budget else None


def _selection(mm: MemoryModel, chosen: dict[str, int], frozen: Mapping[str, int], budget: int, cid: str) -> Selection:
    if not chosen:
        need = min(mm.peak_bytes({m: r}, frozen=frozen) for m, r in frozen.items())
        raise BudgetTooSmallError(need, budget, "the baseline allocation found no module that fits (frozen adapters on "
                                  "every other module included)", client_id=cid)  # fmt: skip
    layer = min(mm.spec.module(m).layer for m in chosen)
    return Selection(dict(sorted(chosen.items())), float(len(chosen)), mm.peak_bytes(chosen, frozen=frozen), int(budget), layer)


def full_lora_fits(spec: ModelSpec, budget: int, mm_kwargs: Mapping[str, Any], rank: int) -> bool:
    """Whether training every module at ``rank`` fits ``budget`` under the memory model."""
    mm = MemoryModel(spec, **dict(mm_kwargs))
    return mm.peak_bytes({m.name: min(rank, m.d_in, m.d_out) for m in spec.modules}) <= budget


def select_last_layers(spec: ModelSpec, budget: int, mm_kwargs: Mapping[str, Any], rank: int, client_id: str = "") -> Selection:
    """The longest suffix of modules (from the output down) whose peak fits ``budget``."""
    mm = MemoryModel(spec, **dict(mm_kwargs))
    frozen = {m.name: rank for m in spec.modules}
    chosen: dict[str, int] = {}
    for name in reversed(_execution_order(spec)):
        if _fits(mm, {**chosen, name: rank}, frozen, budget) is None:
            break
        chosen[name] = rank
    return _selection(mm, chosen, frozen, budget, client_id)


def select_random_modules(spec: ModelSpec, budget: int, mm_kwargs: Mapping[str, Any], rank: int, seed: int,
                          client_id: str = "") -> Selection:  # fmt: skip
    """Modules in a seeded random order, each kept when the selection still fits ``budget``."""
    mm = MemoryModel(spec, **dict(mm_kwargs))
    frozen = {m.name: rank for m in spec.modules}
    order = _execution_order(spec)
    random.Random(seed).shuffle(order)
    chosen: dict[str, int] = {}
    for name in order:
        if _fits(mm, {**chosen, name: rank}, frozen, budget) is not None:
            chosen[name] = rank
    return _selection(mm, chosen, frozen, budget, client_id)


def drop_small_by_rank(spec: ModelSpec, ids: Sequence[str], ranks: Sequence[int], alpha_ratio: float) -> list[ClientPlan]:
    """Plans of the clients at the largest rank (all modules at that rank); the others are dropped."""
    top = max(ranks)
    kept = [cid for cid, r in zip(ids, ranks) if r == top]
    return plan_flexlora(spec, kept, [top] * len(kept), alpha_ratio=alpha_ratio)


def drop_small_by_budget(spec: ModelSpec, ids: Sequence[str], budgets: Sequence[int], mm_kwargs: Mapping[str, Any],
                         rank: int, alpha_ratio: float) -> list[ClientPlan]:  # fmt: skip
    """Full-LoRA plans (every module at ``rank``) of the clients whose budget fits it; the others are dropped."""
    kept = [cid for cid, b in zip(ids, budgets) if full_lora_fits(spec, b, mm_kwargs, rank)]
    return plan_flexlora(spec, kept, [rank] * len(kept), alpha_ratio=alpha_ratio)


class BaselinePlanner:
    """Engine planner for a baseline mode (the interface of ``fedlora.engine.plans.Planner``).

    Args:
        mode: one of :data:`PLAN_MODES`. spec: the model's shapes. ids: the clients.
        ranks: rank per client (``drop-small`` without budgets). budgets: bytes per client, or None.
        mm_kwargs: ``MemoryModel`` keywords. rank: adapter rank under budgets. alpha_ratio: alpha / rank.
        seed: run seed (``random-modules`` draws per round from it).
    """

    needs_importance = False

    def __init__(self, mode: str, spec: ModelSpec, ids: Sequence[str], *, ranks: Sequence[int], budgets: Sequence[int] | None,
                 mm_kwargs: Mapping[str, Any], rank: int, alpha_ratio: float, seed: int) -> None:  # fmt: skip
        if mode not in PLAN_MODES[:4]:
            raise ValueError(f"unknown plan mode {mode!r}; use one of {', '.join(PLAN_MODES)}")
        dropping = mode in ("drop-small", "drop-small-fraction")
        if not dropping and budgets is None:
            raise ValueError(f"plan {mode!r} selects modules under memory budgets; give the clients budgets "
                             "(strategy 'fedpilot' with clients.budgets or clients.budget_low/budget_high)")  # fmt: skip
        self.allocation, self.spec, self.ranks, self.budgets = mode, spec, list(ranks), None if budgets is None else list(budgets)
        self.mm_kwargs, self.rank, self.alpha_ratio, self.seed = dict(mm_kwargs), int(rank), float(alpha_ratio), int(seed)
        self.all_ids = tuple(ids)
        self._static: dict[str, ClientPlan] | None = None
        if dropping:
            plans = (drop_small_by_rank(spec, ids, ranks, alpha_ratio) if budgets is None
                     else drop_small_by_budget(spec, ids, budgets, mm_kwargs, rank, alpha_ratio))  # fmt: skip
            self._static = {p.client_id: p for p in plans}
        elif mode == "last-layers":
            sels = [select_last_layers(spec, b, mm_kwargs, rank, cid) for cid, b in zip(ids, budgets)]
            plans = plans_from_selections(spec, list(ids), sels, rank=rank, alpha_ratio=alpha_ratio)
            self._static = {p.client_id: p for p in plans}
        self.ids = tuple(self._static) if dropping else self.all_ids

    def score_clients(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to score: baselines use no module importance."""

    def plans(self, server_round: int, ids: Sequence[str], strategy: Any = None) -> dict[str, ClientPlan]:
        if self._static is not None:
            return {cid: self._static[cid] for cid in ids}
        from fedlora.engine.sampling import derive_seed

        out = {}
        for cid in ids:
            budget = self.budgets[self.all_ids.index(cid)]
            sel = select_random_modules(self.spec, budget, self.mm_kwargs, self.rank, derive_seed(self.seed, "random-modules", server_round, cid), cid)
            out[cid] = plans_from_selections(self.spec, [cid], [sel], rank=self.rank, alpha_ratio=self.alpha_ratio)[0]
        return out

    def plan_report(self, server_round: int = 1, strategy: Any = None) -> dict[str, Any]:
        plans = self.plans(server_round, self.ids)
        return {"plans": [plans[c] for c in self.ids], "budgets": self.budgets, "predictions": None, "values": None}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.allocation, "ids": list(self.ids)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mode", self.allocation) != self.allocation or list(state.get("ids", self.ids)) != list(self.ids):
            raise ValueError(f"checkpoint was written by plan {state.get('mode')!r} with clients {state.get('ids')}; "
                             f"this run uses plan {self.allocation!r} with clients {list(self.ids)}")  # fmt: skip


class PooledPlanner:
    """Engine planner of the ``centralized`` baseline: one client ``"pooled"`` at ``rank`` on every module."""

    needs_importance = False
    allocation = "centralized"

    def __init__(self, spec: ModelSpec, rank: int, alpha_ratio: float) -> None:
        self.rank, self.ids = int(rank), ("pooled",)
        self._plan = plan_flexlora(spec, ["pooled"], [self.rank], alpha_ratio=alpha_ratio)[0]
        self.ranks, self.budgets = [self.rank], None

    def score_clients(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to score."""

    def plans(self, server_round: int, ids: Sequence[str], strategy: Any = None) -> dict[str, ClientPlan]:
        return {cid: self._plan for cid in ids}

    def plan_report(self, server_round: int = 1, strategy: Any = None) -> dict[str, Any]:
        return {"plans": [self._plan], "budgets": None, "predictions": None, "values": None}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.allocation, "rank": self.rank}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mode") != self.allocation or int(state.get("rank", -1)) != self.rank:
            raise ValueError(f"checkpoint was written by plan {state.get('mode')!r} (rank {state.get('rank')}); this run "
                             f"pools the data at rank {self.rank}")  # fmt: skip


def _install_centralized(engine: Any) -> PooledPlanner:
    from dataclasses import replace

    pooled = [ex for cid in engine.data.client_ids for ex in engine.data.clients[cid]]
    steps = engine.per_round * engine.trainer.config.local_steps
    planner = PooledPlanner(engine.spec, max(engine.planner.ranks), engine.cfg.clients.alpha_ratio)
    engine.data.clients = {"pooled": pooled}
    engine.clocks = {"pooled": max(engine.clocks.values(), key=lambda c: c.speed)}  # one machine, the fastest client's
    engine.per_round, engine.planner = 1, planner
    engine.trainer.config = replace(engine.trainer.config, local_steps=steps)
    engine.progress.message(f"plan centralized: {len(pooled)} examples pooled on one client at rank {planner.rank}, "
                            f"{steps} steps per round")  # fmt: skip
    return planner


def install_plan_mode(engine: Any, mode: str) -> BaselinePlanner | PooledPlanner | None:
    """Replace a set-up engine's planner with ``mode``'s; ``drop-small`` also removes the dropped clients
    (and their data) from the federation, ``centralized`` pools them. ``no-train`` changes nothing (the
    caller runs ``engine.run(stop_after=0)``). Call after ``engine.setup()`` and before ``engine.run()``."""
    from fedlora.engine.plans import memory_model_kwargs
    from fedlora.engine.sampling import clients_per_round

    if mode == "no-train":
        return None
    if mode == "centralized":
        return _install_centralized(engine)
    cfg, old = engine.cfg, engine.planner
    planner = BaselinePlanner(mode, engine.spec, engine.data.client_ids, ranks=old.ranks, budgets=old.budgets,
                              mm_kwargs=memory_model_kwargs(cfg, engine.spec), rank=cfg.clients.fedpilot_rank,
                              alpha_ratio=cfg.clients.alpha_ratio, seed=cfg.run.seed)  # fmt: skip
    if not planner.ids:
        raise ValueError(f"plan {mode!r}: no client can afford the full configuration; raise the budgets or ranks")
    kept = len(planner.ids)
    if mode == "drop-small" and kept < engine.per_round:
        raise ValueError(f"plan 'drop-small': {kept} of {len(planner.all_ids)} clients can afford the full configuration, "
                         f"fewer than the {engine.per_round} clients per round the compared methods train; raise "
                         "data.num_clients, lower clients.clients_per_round, or use plan 'drop-small-fraction' (fewer "
                         "clients per round: a baseline that also trains less)")  # fmt: skip
    engine.data.clients = {cid: engine.data.clients[cid] for cid in planner.ids}
    if mode == "drop-small-fraction":
        per = cfg.clients.clients_per_round
        engine.per_round = clients_per_round(min(per, kept) if isinstance(per, int) else per, kept)
    engine.planner = planner
    engine.progress.message(f"plan {mode}: {kept} of {len(planner.all_ids)} clients take part, {engine.per_round} per round")
    return planner

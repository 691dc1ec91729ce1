"""Who trains what: client ranks and plans from ``[clients]``.

- ``flexlora``: each client its own rank (explicit ``ranks`` or FlexLoRA's resource distribution
  over ``rank_levels``, ``allocation.profiles.sample_ranks``), every targeted module at that rank.
- ``uniform``: every client at ``uniform_rank``, by default the minimum of the client ranks, which
  is the honest FedIT baseline under heterogeneous resources (the "bucket effect").
- ``fedpilot``: memory budgets per client; each round the knapsack planner
  (``allocation.planner.plan_fedpilot``) picks the modules each sampled client trains, valued by
  its local importance (a short gradient pass on its data, once) mixed with the server's
  ``global_importance()`` from round 2 on.
Plans depend only on the config, the (checkpointed) local importance and the strategy state, so a
resumed run makes the same plans.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.config import Config, resolved_allocation
from fedlora.engine.sampling import derive_seed
from fedlora.modelspec import ModelSpec

__all__ = ["client_ranks", "client_budgets", "client_speeds", "memory_model_kwargs", "Planner"]


def client_ranks(cfg: Config) -> list[int]:
    """One LoRA rank per client: ``clients.ranks`` or a draw of ``rank_distribution`` over ``rank_levels``."""
    from fedlora.allocation.profiles import sample_ranks

    c = cfg.clients
    if c.ranks:
        return [int(r) for r in c.ranks]
    return sample_ranks(c.rank_distribution, cfg.data.num_clients, rank_levels=c.rank_levels, seed=derive_seed(cfg.run.seed, "ranks"))


def client_budgets(cfg: Config) -> list[int]:
    """One memory budget (bytes) per client for Fed-pilot."""
    from fedlora.allocation.profiles import budgets_from_list, sample_budgets

    c = cfg.clients
    if c.budgets:
        return budgets_from_list(c.budgets, cfg.data.num_clients)
    return sample_budgets(c.budget_distribution, cfg.data.num_clients, low_bytes=c.budget_low, high_bytes=c.budget_high,
                          num_levels=c.budget_levels, seed=derive_seed(cfg.run.seed, "budgets"))  # fmt: skip


def client_speeds(cfg: Config) -> list[float]:
    """One compute speed (local steps per simulated second) per client: ``clients.speeds`` or a draw of
    ``speed_distribution`` over ``speed_levels`` (quota per level, seeded shuffle, as ranks)."""
    from fedlora.allocation.profiles import sample_levels

    c = cfg.clients
    if c.speeds:
        return [float(s) for s in c.speeds]
    levels = sample_levels(c.speed_distribution, cfg.data.num_clients, len(c.speed_levels), seed=derive_seed(cfg.run.seed, "speeds"))
    return [float(c.speed_levels[i]) for i in levels]


def memory_model_kwargs(cfg: Config, spec: ModelSpec) -> dict[str, Any]:
    """``MemoryModel`` keywords of a client's local training step."""
    t = cfg.train
    return {"batch_size": t.batch_size, "seq_len": t.max_length, "dtype_bytes": spec.param_bytes, "optimizer": t.optimizer,
            "grad_checkpointing": t.grad_checkpointing, "quantization": cfg.model.quantization}  # fmt: skip


class Planner:
    """Plans per round for the run's allocation.

    Args:
        cfg: the run config. spec: the model's shapes. ids: every client id, in order.
    """

    def __init__(self, cfg: Config, spec: ModelSpec, ids: Sequence[str]) -> None:
        self.cfg, self.spec, self.ids = cfg, spec, tuple(ids)
        self.allocation = resolved_allocation(cfg)
        self.ranks = client_ranks(cfg)
        self.budgets = client_budgets(cfg) if self.allocation == "fedpilot" else None
        self.local_importance: dict[str, dict[str, float]] = {}
        c = cfg.clients
        self.precisions = dict(zip(self.ids, c.quantization or [cfg.model.quantization] * len(self.ids)))
        """Each client's base precision; with ``clients.precision_options`` the Fed-pilot plans set it every round."""
        self._static = None if self.allocation == "fedpilot" else self._static_plans()

    def _static_plans(self) -> dict[str, ClientPlan]:
        from fedlora.allocation.planner import plan_flexlora

        ranks = self.ranks
        if self.allocation == "uniform":
            ranks = [self.cfg.clients.uniform_rank or min(self.ranks)] * len(self.ids)
        plans = plan_flexlora(self.spec, self.ids, ranks, alpha_ratio=self.cfg.clients.alpha_ratio)
        return {p.client_id: p for p in plans}

    @property
    def needs_importance(self) -> bool:
        return self.allocation == "fedpilot" and len(self.local_importance) < len(self.ids)

    def score_clients(self, model: Any, tokenizer: Any, data: Mapping[str, Sequence], on_client=None) -> None:
        """Fed-pilot: local module importance of every client (once per run; kept in checkpoints)."""
        from fedlora.engine.importance import client_importance

        for cid in self.ids:
            if cid not in self.local_importance:
                self.local_importance[cid] = client_importance(model, tokenizer, data[cid], self.cfg, self.spec, cid)
                if on_client is not None:
                    on_client(cid)

    def plans(self, server_round: int, ids: Sequence[str], strategy: Any = None) -> dict[str, ClientPlan]:
        """Plans of the clients ``ids`` for ``server_round`` (Fed-pilot mixes in ``strategy.global_importance()``)."""
        if self._static is not None:
            return {cid: self._static[cid] for cid in ids}
        plans, _ = self._fedpilot(server_round, ids, strategy)
        return plans

    def _fedpilot(self, server_round: int, ids: Sequence[str], strategy: Any) -> tuple[dict[str, ClientPlan], list]:
        from fedlora.allocation.importance_mix import mix
        from fedlora.allocation.planner import fedpilot_selections, plans_from_selections

        if self.needs_importance:
            raise RuntimeError("Fed-pilot plans need each client's local importance; call Planner.score_clients first")
        c = self.cfg.clients
        global_ = strategy.global_importance() if strategy is not None and server_round > 1 else None
        values = [mix(self.local_importance[cid], global_, c.importance_mix) for cid in ids]
        budgets = [self.budgets[self.ids.index(cid)] for cid in ids]
        kwargs = memory_model_kwargs(self.cfg, self.spec)
        if c.precision_options:  # precision and modules chosen jointly per client
            from fedlora.allocation.planner import fedpilot_precision_selections

            joint = fedpilot_precision_selections(self.spec, list(ids), budgets, values, kwargs, c.precision_options,
                                                  precision_weights=c.precision_weights, rank=c.fedpilot_rank)  # fmt: skip
            self.precisions.update({cid: j.quantization for cid, j in zip(ids, joint)})
            selections = [j.selection for j in joint]
        else:
            if c.quantization:
                kwargs = [{**kwargs, "quantization": self.precisions[cid]} for cid in ids]
            selections = fedpilot_selections(self.spec, list(ids), budgets, values, kwargs, rank=c.fedpilot_rank)
        plans = plans_from_selections(self.spec, list(ids), selections, rank=c.fedpilot_rank, alpha_ratio=c.alpha_ratio)
        return {p.client_id: p for p in plans}, selections

    def plan_report(self, server_round: int = 1, strategy: Any = None) -> dict[str, Any]:
        """Round ``server_round``'s plans of every client, with budgets, predicted peaks and values when known."""
        if self._static is not None:
            plans = [self._static[c] for c in self.ids]
            return {"plans": plans, "budgets": None, "precisions": [self.precisions[c] for c in self.ids],
                    "predictions": self._predicted_peaks(plans), "values": None}  # fmt: skip
        plans, selections = self._fedpilot(server_round, self.ids, strategy)
        return {"plans": [plans[c] for c in self.ids], "budgets": self.budgets, "precisions": [self.precisions[c] for c in self.ids],
                "predictions": [s.predicted_bytes for s in selections], "values": [s.value for s in selections]}  # fmt: skip

    def _predicted_peaks(self, plans: Sequence[ClientPlan]) -> list[int] | None:
        """Training-memory peak of each plan by ``allocation.memory.MemoryModel`` (None if it cannot model the spec)."""
        from fedlora.allocation.memory import MemoryModel

        try:
            kwargs = memory_model_kwargs(self.cfg, self.spec)
            return [int(MemoryModel(self.spec, **{**kwargs, "quantization": self.precisions[p.client_id]}).peak_bytes(dict(p.ranks)))
                    for p in plans]  # fmt: skip
        except (ValueError, KeyError):
            return None

    def state_dict(self) -> dict[str, Any]:
        return {"local_importance": {c: dict(v) for c, v in self.local_importance.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.local_importance = {c: {m: float(x) for m, x in v.items()} for c, v in state.get("local_importance", {}).items()}

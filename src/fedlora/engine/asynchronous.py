"""Asynchronous buffered aggregation on the simulated clock (FedBuff: Nguyen et al., "Federated
Learning with Buffered Asynchronous Aggregation", AISTATS 2022).

``run.mode = "async"``: ``clients_per_round`` clients are always in flight. A client is sent the
current global adapter, trains at once, and its update *arrives* when the simulated clock
(:mod:`fedlora.engine.clock`) says it has finished; another idle client is dispatched in its place.
When ``run.buffer_size`` updates have arrived, the server aggregates them (one "round" of the run =
one aggregation = one global version), so a slow client never blocks anyone: its update simply
arrives later, ``τ`` versions stale.

A stale update is **rebased** before aggregation: its change is moved onto the factors the client
would receive now, ``θ'_k = θ_now + (θ_k − θ_then)`` per factor, and weighted by
``n_k (1 + τ_k)^(−a)`` (``a = run.staleness_exponent``; FedBuff's staleness scaling). For the methods
that average factors (FedIT, FFA-LoRA, FedProx on them) the result is exactly
``θ_now + Σ_k w_k (θ_k − θ_then)``, FedBuff with server learning rate 1; for FlexLoRA and HetLoRA the
rebased factors carry the change to first order. Methods whose rounds change what a client starts
from in other ways (FLoRA's fresh LoRA, RoLoRA's alternation, FedSVD's re-factoring, FedEx-LoRA's
base residual, FedSA-LoRA's personal ``B``, Fed-pilot's plans) are refused (``ASYNC_METHODS``).

Everything random is derived from ``(seed, dispatch number)`` and the in-flight clients (their
payloads and already computed updates) are part of the checkpoint, so a resumed run is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, rescale_alpha
from fedlora.strategies.base import Payload
from fedlora.strategies.registry import ASYNC_METHODS  # re-exported: the list lives with the registry

__all__ = ["ASYNC_METHODS", "InFlight", "AsyncState", "rebase_update", "staleness_weight"]


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedBuff's ``(1 + τ)^(−a)``."""
    return float((1.0 + max(0, int(staleness))) ** (-float(exponent)))


def _start(payload: Payload, module: str, like: LoraFactors) -> LoraFactors:
    """The factors ``payload`` starts ``module`` from, at the plan's alpha (fresh init when absent)."""
    plan = payload.plan
    f = payload.init.get(module)
    if f is None:
        return init_lora_factors(like.d_out, like.d_in, int(plan.ranks[module]), float(plan.alphas[module]), payload.seed, module)
    return rescale_alpha(f, float(plan.alphas[module])) if float(f.alpha) != float(plan.alphas[module]) else f


def rebase_update(update: Update, then: Payload, now: Payload, weight: float) -> Update:
    """``θ_now + (θ_k − θ_then)`` per factor (float64 math, float32 out), ``num_examples`` scaled by ``weight``.

    ``num_examples`` stays an int: the weighted count is rounded after multiplying by 1000, so
    relative weights keep three significant digits.
    """
    factors = {}
    for m, f in update.factors.items():
        a, b = _start(then, m, f), _start(now, m, f)
        if f.rank != a.rank or a.rank != b.rank:  # a client that pruned its rank (HetLoRA) keeps its own factors
            factors[m] = f
            continue
        A = (b.A.double() + f.A.double() - a.A.double()).float()
        B = (b.B.double() + f.B.double() - a.B.double()).float()
        factors[m] = LoraFactors(A, B, f.alpha)
    return Update(update.client_id, factors, max(1, round(1000 * update.num_examples * weight)), dict(update.metrics))


@dataclass
class InFlight:
    """A dispatched client: when its update arrives, from which version, what it was sent, what it sends."""

    arrival: float
    client_id: str
    version: int
    payload: Payload
    update: Update | None  # None: its training failed (reported at arrival)
    record: dict

    def key(self) -> tuple[float, str]:
        return (self.arrival, self.client_id)


@dataclass
class AsyncState:
    """Clients in flight and the dispatch counter (the whole state between aggregations)."""

    in_flight: list[InFlight] = field(default_factory=list)
    dispatched: int = 0

    def pop_next(self) -> InFlight:
        """The earliest arrival (ties: client id)."""
        self.in_flight.sort(key=InFlight.key)
        return self.in_flight.pop(0)

    def busy(self) -> set[str]:
        return {f.client_id for f in self.in_flight}

    def pick(self, ids: Sequence[str], exclude: set[str], seed: int) -> str | None:
        """A seeded draw among the idle clients (``None`` when every client is busy)."""
        idle = [c for c in ids if c not in exclude]
        if not idle:
            return None
        chosen = random.Random(_derive(seed, "async-dispatch", self.dispatched)).choice(idle)
        self.dispatched += 1
        return chosen

    def to_state(self) -> dict[str, Any]:
        return {"dispatched": self.dispatched, "in_flight": [_flight_to_state(f) for f in sorted(self.in_flight, key=InFlight.key)]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AsyncState":
        return cls([_flight_from_state(d) for d in state["in_flight"]], int(state["dispatched"]))


def _derive(seed: int, *parts: object) -> int:
    from fedlora.engine.sampling import derive_seed

    return derive_seed(seed, *parts)


def _adapter_state(adapter: Adapter | None) -> dict | None:
    if adapter is None:
        return None
    return {m: {"A": f.A, "B": f.B, "alpha": float(f.alpha)} for m, f in adapter.items()}


def _adapter(state: Mapping | None) -> Adapter | None:
    if state is None:
        return None
    return {m: LoraFactors(d["A"], d["B"], float(d["alpha"])) for m, d in state.items()}


def _flight_to_state(f: InFlight) -> dict[str, Any]:
    p = f.payload
    payload = {"plan": p.plan.to_dict(), "init": _adapter_state(p.init), "seed": p.seed, "train_A": p.train_A,
               "train_B": p.train_B, "options": dict(p.options)}  # fmt: skip
    update = None if f.update is None else {"client_id": f.update.client_id, "factors": _adapter_state(f.update.factors),
                                            "num_examples": f.update.num_examples, "metrics": dict(f.update.metrics)}  # fmt: skip
    return {"arrival": f.arrival, "client_id": f.client_id, "version": f.version, "payload": payload, "update": update, "record": dict(f.record)}


def _flight_from_state(d: Mapping[str, Any]) -> InFlight:
    from fedlora.allocation.plan import ClientPlan

    p = d["payload"]
    payload = Payload(ClientPlan.from_dict(p["plan"]), init=_adapter(p["init"]) or {}, seed=int(p["seed"]),
                      train_A=bool(p["train_A"]), train_B=bool(p["train_B"]), options=dict(p["options"]))  # fmt: skip
    u = d["update"]
    update = None if u is None else Update(u["client_id"], _adapter(u["factors"]), int(u["num_examples"]), dict(u["metrics"]))
    return InFlight(float(d["arrival"]), str(d["client_id"]), int(d["version"]), payload, update, dict(d["record"]))


"""The Strategy protocol shared by every federated LoRA method, and the payload a client receives.

A strategy is explicit state plus two steps (DESIGN.md section 1):
``configure(round, plans) -> {client_id: Payload}`` and ``aggregate(round, updates) -> RoundResult``.
The same objects serve the in-process engine and Flower; they import torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, Update

__all__ = ["Payload", "RoundResult", "Strategy"]


@dataclass
class Payload:
    """What the server sends one client for one round.

    Attributes:
        plan: the client's modules, ranks, alphas and trainable set.
        init: starting factors per module. A module of ``plan.ranks`` missing here starts from a
            fresh LoRA init, seeded by ``seed`` and the module name (the same for every client), so
            clients with the same seed share their fresh ``A``.
        seed: seed of fresh inits (FFA-LoRA's shared frozen ``A`` comes from it).
        train_A, train_B: which factors are trainable (FFA-LoRA freezes ``A``).
        base_delta: a frozen low-rank update to merge into the base weights before training (FLoRA);
            ``None`` means the original base weights. ``base_delta_version`` changes whenever it does,
            so a client can keep it applied across clients of the same round.
        options: method-specific client-side settings with plain values, e.g. HetLoRA's
            ``{"hetlora_gamma": 0.99, "hetlora_lambda": 1e-3, "hetlora_prune": True}``.
    """

    plan: ClientPlan
    init: Adapter = field(default_factory=dict)
    seed: int = 0
    train_A: bool = True
    train_B: bool = True
    base_delta: Adapter | None = None
    base_delta_version: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundResult:
    """Outcome of one aggregation.

    Attributes:
        accepted: client ids whose updates were aggregated.
        rejected: client id -> reason, for updates refused by validation.
        metrics: aggregate numbers worth logging (e.g. weights, norms).
    """

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    """A federated LoRA method.

    ``configure`` remembers the plans it sent, so that ``aggregate`` validates each update against
    its client's plan (shapes, ranks, modules, finite values, dtype), rejects bad ones into
    ``RoundResult.rejected`` and aggregates the rest. ``global_adapter`` is the full global update
    relative to the original base weights, used for evaluation and export.
    """

    name: str

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]: ...

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult: ...

    def global_adapter(self) -> Adapter: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

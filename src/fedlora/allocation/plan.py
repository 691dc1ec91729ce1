"""ClientPlan: which modules a client adapts, at which rank and alpha, and which it trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

__all__ = ["ClientPlan"]


@dataclass(frozen=True)
class ClientPlan:
    """What one client trains.

    Attributes:
        client_id: the client.
        ranks: PEFT module path -> LoRA rank, for every module that carries an adapter. A module
            absent here has no adapter at all (never ``r=0``).
        alphas: module path -> LoRA alpha, same keys as ``ranks``.
        trainable: the modules whose adapters are trained; ``None`` means all of ``ranks``. Modules
            in ``ranks`` but not trainable are applied frozen (Fed-pilot).
    """

    client_id: str
    ranks: Mapping[str, int]
    alphas: Mapping[str, float]
    trainable: frozenset[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if set(self.ranks) != set(self.alphas):
            missing = sorted(set(self.ranks) ^ set(self.alphas))[:3]
            raise ValueError(f"ClientPlan {self.client_id!r}: ranks and alphas must have the same modules; differ on {missing}")
        bad = {m: r for m, r in self.ranks.items() if int(r) < 1}
        if bad:
            raise ValueError(f"ClientPlan {self.client_id!r}: ranks must be >= 1 (leave a module out instead of r=0); got {bad}")
        if self.trainable is not None and not set(self.trainable) <= set(self.ranks):
            extra = sorted(set(self.trainable) - set(self.ranks))[:3]
            raise ValueError(f"ClientPlan {self.client_id!r}: trainable modules {extra} have no rank in the plan")

    @property
    def trainable_modules(self) -> frozenset[str]:
        return frozenset(self.ranks) if self.trainable is None else frozenset(self.trainable)

    @classmethod
    def uniform(cls, client_id: str, modules: Iterable[str], rank: int, alpha: float) -> "ClientPlan":
        """Every module at the same rank and alpha, all trainable."""
        modules = list(modules)
        return cls(client_id, {m: rank for m in modules}, {m: float(alpha) for m in modules})

    def to_dict(self) -> dict:
        return {
            "client_id": self.client_id,
            "ranks": dict(self.ranks),
            "alphas": dict(self.alphas),
            "trainable": None if self.trainable is None else sorted(self.trainable),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ClientPlan":
        trainable = data.get("trainable")
        return cls(
            data["client_id"],
            {k: int(v) for k, v in data["ranks"].items()},
            {k: float(v) for k, v in data["alphas"].items()},
            None if trainable is None else frozenset(trainable),
        )

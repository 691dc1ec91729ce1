"""A method that is another method's server rule plus options its clients train with.

``self.inner`` is the server rule (configure, aggregate, global adapter, seed); ``client_options(round)``
returns what is added to every payload's ``options`` that round (nothing: the payloads go unchanged).
FedProx adds its proximal strength, FedRot-LoRA the factor to align and the alignment strength.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, Update
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["ClientOptionsOn"]


class ClientOptionsOn:
    """``inner``'s server rule; ``client_options(server_round)`` merged into each payload's ``options``."""

    inner: Any

    @property
    def seed(self) -> int:
        return self.inner.seed

    def client_options(self, server_round: int) -> Mapping[str, Any]:
        """The options every client of ``server_round`` trains with (none by default)."""
        return {}

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        payloads = self.inner.configure(server_round, plans)
        extra = dict(self.client_options(server_round))
        if extra:
            for p in payloads.values():
                p.options = {**p.options, **extra}
        return payloads

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        return self.inner.aggregate(server_round, updates)

    def global_adapter(self) -> Adapter:
        return self.inner.global_adapter()

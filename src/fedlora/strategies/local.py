"""Local-only training: the floor of every federated-learning comparison (no aggregation at all).

Each client keeps training its own adapter from the round it last took part in; the server only
stores the adapters, one per client, and never combines them (``ΔW_k`` stays client ``k``'s). There
is no global model: :meth:`LocalOnly.evaluation_adapters` hands the engine every client's adapter,
and the engine reports the mean of each metric over the clients' models (the "local" row of
FedAvg-style papers, e.g. McMahan et al., AISTATS 2017; Bai et al., NeurIPS 2024, Table 2 "Local").
Any rank, module subset or alpha per client works, since nothing is combined.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, Update
from fedlora.lora.linalg import rescale_alpha
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["LocalOnly"]


class LocalOnly:
    """Every client trains alone; its adapter is stored for its next round and for evaluation.

    Args:
        seed: seed of each client's fresh init in its first round.
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check update shapes.
    """

    name = "local"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        self.seed = int(seed)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._clients: dict[str, Adapter] = {}
        self._book = C.RoundBook()

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, plans, "LocalOnly")
        return {cid: Payload(plan, init=self._init_for(plan), seed=self.seed) for cid, plan in plans_by_id.items()}

    def _init_for(self, plan: ClientPlan) -> Adapter:
        own = self._clients.get(plan.client_id, {})
        return {m: rescale_alpha(own[m], plan.alphas[m]) for m in plan.ranks if m in own and own[m].rank == plan.ranks[m]}

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "LocalOnly", shapes)
        for u in valid:
            self._clients[u.client_id] = {**self._clients.get(u.client_id, {}), **dict(u.factors)}
        self._shapes.update(shapes)
        return RoundResult([u.client_id for u in valid], rejected, C.round_metrics(valid, rejected))

    def global_adapter(self) -> Adapter:
        """No global model: empty (export the clients' adapters with :meth:`evaluation_adapters`)."""
        return {}

    def evaluation_adapters(self) -> dict[str, Adapter]:
        """Client id -> its own adapter, for every client that has trained (sorted by id)."""
        return {cid: dict(self._clients[cid]) for cid in sorted(self._clients)}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "shapes": C.shapes_to_state(self._shapes), "book": self._book.to_state(),
                "clients": {cid: C.adapter_to_state(a) for cid, a in sorted(self._clients.items())}}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.seed = int(state["seed"])
        self._shapes = C.normalize_shapes(state["shapes"])
        self._book = C.RoundBook.from_state(state["book"])
        self._clients = {cid: C.adapter_from_state(a) for cid, a in state["clients"].items()}

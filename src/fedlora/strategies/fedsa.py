"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
ICLR 2025).

The ``A`` matrices learn what clients share and the ``B`` matrices what is client-specific, so only
``A`` is aggregated: ``Ā = Σ_k p_k A_k`` (shapes ``A_k [r_k, d_in]``), and every client keeps its own
``B_k [d_out, r_k]`` across rounds. Client ``k``'s model is ``s_k B_k Ā[:r_k]``: a personalised model.
Its personal ``B`` lives in a :class:`~fedlora.strategies.personal_store.PersonalStore` (in the run
folder when the engine attaches one: memory flat in the number of clients); a client in its first
round starts from ``B = 0``.

Heterogeneous ranks: supported. Row ``i`` of ``Ā`` is averaged over the clients whose rank exceeds
``i`` (:func:`fedlora.lora.compose.rowwise_average`), so small clients do not pull the rows they never
had toward zero; client ``k`` receives ``Ā[:r_k]`` (grown with fresh-init rows where no client has
trained one yet) and its own ``B_k``.

The global model (for evaluation beside the personalised ones, and for export) is ``B̄ Ā`` with
``B̄ = Σ_k p_k s_k [B_k, 0]``, the weighted mean of the round's personal ``B``, zero-padded.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import padded_average, rowwise_average
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import extend_rank
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState
from fedlora.strategies.personal_store import PersonalStore

__all__ = ["FedSALoRA"]


class FedSALoRA(OnServerState):
    """Shared ``A`` (aggregated), personal ``B`` (kept per client)."""

    name = "fedsa"
    label = "FedSA-LoRA"
    heterogeneous_ranks = True

    def __init__(self, **server: Any) -> None:  # seed, shapes: OnServerState
        super().__init__(**server)
        self._A: dict[str, torch.Tensor] = {}
        self.personal = PersonalStore()

    def attach_client_store(self, folder: str | os.PathLike, keep: int = 3) -> None:
        """Keep the personal ``B`` of every client in ``folder`` (the engine calls this)."""
        self.personal.attach(folder, keep)

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        return {cid: Payload(p, init=self._init_for(p), seed=self.seed) for cid, p in self.server.start(server_round, plans).items()}

    def _init_for(self, plan: ClientPlan) -> Adapter:
        """Shared ``Ā[:r]`` and the client's own ``B`` (zero in its first round), at the plan's alpha."""
        own = self.personal.get(plan.client_id) or {}
        init = {}
        for m, r in plan.ranks.items():
            if m not in self._A:
                continue  # never aggregated: the trainer's shared fresh init
            r, d_out = int(r), self.server.shapes[m][0]
            A = extend_rank(LoraFactors(self._A[m], torch.zeros(d_out, self._A[m].shape[0]), 1.0), r, self.seed, m).A
            mine = own.get(m)
            B = mine.B * (mine.scale / (plan.alphas[m] / r)) if mine is not None and mine.rank == r else torch.zeros(d_out, r)
            init[m] = LoraFactors(A.contiguous(), B, float(plan.alphas[m]))
        return init

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True)
        new_A, new_global = dict(self._A), {}
        for module, group in self.server.groups(valid).items():
            factors, weights = [f for _, f in group], C.example_weights(group)
            r_max = max(f.rank for f in factors)
            new_A[module] = rowwise_average([f.A for f in factors], weights, r_max)
            B = padded_average(factors, weights, r_max).B
            new_global[module] = LoraFactors(new_A[module], B, float(r_max))
        for u in valid:
            kept = {m: f for m, f in u.factors.items()}
            self.personal.put(u.client_id, {**(self.personal.get(u.client_id) or {}), **kept}, server_round)
        self._A = new_A
        self.server.commit(new_global, shapes)
        return self.server.result(valid, rejected)

    def personal_adapters(self) -> Iterator[tuple[str, Adapter]]:
        """``(client, s_k B_k Ā[:r_k])`` for every client that has trained, one at a time (sorted)."""
        for cid, own in self.personal.items():
            yield cid, {m: LoraFactors(self._A[m][: f.rank].contiguous(), f.B, f.alpha) for m, f in own.items() if m in self._A}

    def state_dict(self) -> dict[str, Any]:
        return self.server.to_state(self.name) | {"A": dict(self._A), "personal": self.personal.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load(state, self.name)
        self._A = {m: t.clone() for m, t in state["A"].items()}
        self.personal.load_state_dict(state["personal"])


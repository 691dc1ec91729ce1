"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Large Language Models", ACL 2025).

FedAvg of the factors, ``Ā = Σ p_k A_k``, ``B̄ = Σ p_k s_k B_k``, plus the residual that FedAvg
misses, ``R = Σ_k p_k s_k B_k A_k − B̄ Ā``, folded into the frozen base weights, so the global update
``W_0 + Σ_t R_t + B̄ Ā`` is exactly the average of the clients' updates (shapes: ``A_k [r, d_in]``,
``B_k [d_out, r]``, ``R [d_out, d_in]``).

Here the cumulative residual is kept as exact low-rank factors (:func:`fedlora.lora.compose.stacked_residual`,
re-compressed without loss by :func:`fedlora.strategies.flora.merge_stacked` once its rank exceeds
``min(d_out, d_in)``) and sent as ``payload.base_delta``; clients start from ``(Ā, B̄)`` on that base.

Heterogeneous ranks: not supported (ValueError, as FedIT). The residual would make a zero-padded
average exact, but each client would then start from the leading ``r_j`` part of ``B̄ Ā`` and lose
the rest unless its own base carried it: one base per rank group. Give every client the minimum rank.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import padded_average, stacked_residual
from fedlora.lora.factors import Adapter, Update
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState
from fedlora.strategies.flora import merge_stacked

__all__ = ["FedExLoRA"]


class FedExLoRA(OnServerState):
    """FedAvg of ``A`` and ``B`` with the exact residual folded into the base (homogeneous rank)."""

    name = "fedex"
    label = "FedEx-LoRA"
    heterogeneous_ranks = False

    def __init__(self, **server: Any) -> None:  # seed, shapes: OnServerState
        super().__init__(**server)
        self._residual: Adapter = {}
        self._version = 0

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        C.homogeneous_ranks(plans, self.server.ranks(), "FedEx-LoRA")
        base = dict(self._residual) or None
        return {cid: Payload(p, init=self.server.init_at_alpha(p), seed=self.seed, base_delta=base, base_delta_version=self._version)
                for cid, p in self.server.start(server_round, plans).items()}  # fmt: skip

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True)
        new, residual = {}, dict(self._residual)
        for module, group in self.server.groups(valid).items():
            factors, weights = [f for _, f in group], C.example_weights(group)
            new[module] = padded_average(factors, weights, factors[0].rank)
            residual[module] = merge_stacked(residual.get(module), stacked_residual(factors, weights, new[module]))
        self.server.commit(new if valid else {}, shapes)
        if valid:
            self._residual, self._version = residual, int(server_round)
        rank = max((f.rank for f in self._residual.values()), default=0)
        return self.server.result(valid, rejected, {"max_residual_rank": float(rank)})

    def global_adapter(self) -> Adapter:
        """``Σ_t R_t + B̄ Ā`` as stacked factors with ``alpha = rank`` (scale 1)."""
        return {m: merge_stacked(self._residual.get(m), f) for m, f in self.server.adapter.items()}

    def state_dict(self) -> dict[str, Any]:
        return self.server.to_state(self.name) | {"residual": C.adapter_to_state(self._residual), "version": self._version}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load(state, self.name)
        self._residual = C.adapter_from_state(state["residual"])
        self._version = int(state["version"])

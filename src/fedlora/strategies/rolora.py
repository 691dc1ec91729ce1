"""RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA",
NeurIPS 2025).

Alternating optimisation: in odd rounds every client trains ``B`` with the global ``A`` frozen, in
even rounds ``A`` with the global ``B`` frozen. Because the frozen factor is the same for everyone,
averaging the trained one is exact:
``B̄ = Σ_k p_k s_k B_k`` gives ``B̄ A = Σ_k p_k s_k B_k A`` (odd rounds), and
``Ā = Σ_k p_k A_k`` gives ``B Ā = Σ_k p_k B A_k`` (even rounds, ``B`` at scale 1 sent as ``B / s_j``).

Heterogeneous ranks: supported by zero padding (:func:`fedlora.lora.compose.padded_average`).
Client ``j`` receives the first ``r_j`` components of the global factors; the trained factor is
padded with zeros to the round's largest rank, so the average stays exactly ``Σ p_k ΔW_k`` of the
clients' own updates. Shapes: ``A [r_max, d_in]``, ``B [d_out, r_max]``, ``alpha = r_max``.
"""

from __future__ import annotations

from typing import Any, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import client_head, padded_average
from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState

__all__ = ["RoLoRA", "trains_A"]


def trains_A(server_round: int) -> bool:
    """Even rounds train ``A`` (``B`` frozen); odd rounds train ``B`` (``A`` frozen)."""
    return int(server_round) % 2 == 0


class RoLoRA(OnServerState):
    """Alternating ``B`` / ``A`` rounds with exact averaging of the trained factor."""

    name = "rolora"
    label = "RoLoRA"
    heterogeneous_ranks = True

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        a_round = trains_A(server_round)
        return {cid: Payload(p, init=self.server.leading_heads(p), seed=self.seed, train_A=a_round, train_B=not a_round)
                for cid, p in self.server.start(server_round, plans).items()}  # fmt: skip

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        a_round, plans = trains_A(server_round), self.server.book.plans
        starts = C.round_starts(self.server.adapter, plans.values(), shapes, self.seed)
        # the frozen factor each client must send back unchanged, at its own alpha
        frozen: dict[str, dict[str, Any]] = {}
        for cid, p in plans.items():
            heads = {m: client_head(starts[m], int(r), p.alphas[m], self.seed, m) for m, r in p.ranks.items() if m in starts}
            frozen[cid] = ({"train_B": False, "expected_B": {m: h.B for m, h in heads.items()}} if a_round
                           else {"train_A": False, "expected_A": {m: h.A for m, h in heads.items()}})  # fmt: skip
        valid, rejected = self.server.validate(server_round, updates, shapes, per_client=frozen, exact_rank=True)
        new = {}
        for module, group in self.server.groups(valid).items():
            start = starts[module]
            avg = padded_average([f for _, f in group], C.example_weights(group), start.rank)
            new[module] = LoraFactors(avg.A, start.B, avg.alpha) if a_round else LoraFactors(start.A, avg.B, avg.alpha)
        self.server.commit(new, shapes)
        return self.server.result(valid, rejected, {"trained_A": float(a_round)})


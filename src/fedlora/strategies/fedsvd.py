"""FedSVD (Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning with
LoRA", NeurIPS 2025).

Clients train only ``B`` with the global ``A`` frozen. The server averages ``B̄ = Σ_k p_k s_k B_k``
(exact, ``A`` being shared), forms ``B̄ A`` and re-factors it by SVD, ``B̄ A = U S Vh``: the new ``A``
is ``Vh`` (orthonormal rows, following the principal directions of the aggregate update) and the new
``B`` is ``U S``, so the product is unchanged (:func:`fedlora.lora.compose.orthonormal_refactor`;
factored SVD, ``O((d_out + d_in) r²)``, no dense ``d_out x d_in`` matrix). Round 1 uses the shared
fresh init ``A`` of ``payload.seed``.

Heterogeneous ranks: supported. The global factors are kept at the round's largest rank, sorted by
singular value, so client ``j``'s first ``r_j`` components are the best rank-``r_j`` part of the global
update (FlexLoRA's truncated SVD). ``B_k`` is zero-padded to ``r_max``; since ``A`` is shared,
``Σ_k p_k s_k [B_k, 0] A = Σ_k p_k ΔW_k`` exactly. Shapes: ``A [r_max, d_in]``, ``B [d_out, r_max]``,
``alpha = r_max`` (scale 1).
"""

from __future__ import annotations

from typing import Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import orthonormal_refactor, padded_average
from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState

__all__ = ["FedSVD"]


class FedSVD(OnServerState):
    """``B``-only training with the aggregate re-factored by SVD so that ``A`` follows the update."""

    name = "fedsvd"
    label = "FedSVD"
    heterogeneous_ranks = True

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        return {cid: Payload(p, init=self.server.leading_heads(p), seed=self.seed, train_A=False)
                for cid, p in self.server.start(server_round, plans).items()}  # fmt: skip

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        starts = C.round_starts(self.server.adapter, self.server.book.plans.values(), shapes, self.seed)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True, train_A=False,
                                               expected_A={m: f.A for m, f in starts.items()})  # fmt: skip
        new = {}
        for module, group in self.server.groups(valid).items():
            avg = padded_average([f for _, f in group], C.example_weights(group), starts[module].rank)
            new[module] = orthonormal_refactor(LoraFactors(starts[module].A, avg.B, avg.alpha))
        self.server.commit(new, shapes)
        return self.server.result(valid, rejected)


"""FedIT: FedAvg on the LoRA factors (Zhang et al., "Towards Building the Federated GPT: Federated
Instruction Tuning", ICASSP 2024).

Every client trains the same rank ``r`` per module. The server averages ``A`` and ``B`` separately:
``A = Σ_k p_k A_k``, ``B = Σ_k p_k s_k B_k`` with ``p_k = n_k / Σ_j n_j`` and ``s_k = alpha_k / r``
folded into ``B`` so clients with different alphas combine correctly (with equal alphas this is
plain FedAvg, ``s · Σ p_k B_k``). The global state keeps ``alpha = r`` (scale 1); a client with
alpha ``a_j`` receives ``B / s_j``. Note ``B @ A ≠ Σ p_k s_k B_k A_k`` in general: that is the
method's known inexactness. Under heterogeneous ranks the honest baseline is everyone at the
minimum rank; mixed ranks raise a ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.robust import robust_average
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import ServerState, check_robust, server_seed

__all__ = ["FedIT", "fedavg_factors"]


def fedavg_factors(factors: Sequence[LoraFactors], weights: Sequence[float], rule: str = "mean", beta: float = 0.1) -> LoraFactors:
    """``A = Σ p_k A_k``, ``B = Σ p_k s_k B_k`` (float64 math), returned with ``alpha = r`` (scale 1).

    All factors must share the rank ``r``: ``A_k [r, d_in]``, ``B_k [d_out, r]``. ``rule`` ``median`` or
    ``trimmed_mean`` replaces the weighted mean by that robust average of ``A_k`` and ``s_k B_k``
    (:mod:`fedlora.lora.robust`).
    """
    A = robust_average([f.A for f in factors], weights, rule, beta)
    B = robust_average([f.scale * f.B.to(torch.float64) for f in factors], weights, rule, beta)
    rank = factors[0].rank
    return LoraFactors(A.to(C.STATE_DTYPE), B.to(C.STATE_DTYPE), float(rank))


class FedIT:
    """FedAvg on LoRA ``A`` and ``B`` (homogeneous rank).

    Args:
        seed: seed of the shared fresh init (round 1: every client gets the same ``A``).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
        robust: ``mean`` (FedAvg), or the robust ``median`` / ``trimmed_mean`` (fraction ``trim`` cut at each end).
    """

    name = "fedit"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
                 robust: str = "mean", trim: float = 0.1) -> None:  # fmt: skip
        check_robust(robust, trim, "FedIT")
        self.robust, self.trim = robust, float(trim)
        self.server = ServerState("FedIT", seed, shapes)

    seed = server_seed

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        C.homogeneous_ranks(plans, self.server.ranks(), "FedIT")
        return {cid: Payload(p, init=self.server.init_at_alpha(p), seed=self.seed) for cid, p in self.server.start(server_round, plans).items()}

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True)
        groups = self.server.groups(valid)
        self.server.commit({m: fedavg_factors([f for _, f in g], C.example_weights(g), self.robust, self.trim) for m, g in groups.items()}, shapes)
        return self.server.result(valid, rejected)

    def global_adapter(self) -> Adapter:
        """Global ``A``, ``B`` with ``alpha = r`` (scale 1): ``ΔW = B @ A``."""
        return dict(self.server.adapter)

    def state_dict(self) -> dict[str, Any]:
        return self.server.to_state(self.name)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load(state, self.name)

"""FFA-LoRA (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024).

``A`` is frozen at a fresh init from a seed shared by every client in every round
(:func:`fedlora.lora.linalg.init_lora_factors`, ``payload.train_A = False``); only ``B`` is trained,
sent and averaged. With a common ``A`` the average is exact:
``Σ_k p_k s_k B_k A = (Σ_k p_k s_k B_k) A``, so the global state is ``B = Σ p_k s_k B_k`` with
``alpha = r`` (scale 1) and the frozen ``A``; a client with alpha ``a_j`` receives ``B / s_j``.
After round 1 the payload's ``init`` carries the frozen ``A`` and the global ``B``.
Homogeneous rank per module is required (a shared frozen ``A`` has one shape); an update whose
``A`` differs from the frozen ``A`` is rejected.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors
from fedlora.lora.robust import robust_average
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState, check_robust

__all__ = ["FFALoRA", "average_B"]


def average_B(factors: Sequence[LoraFactors], weights: Sequence[float], frozen_A: torch.Tensor, rule: str = "mean",
              beta: float = 0.1) -> LoraFactors:  # fmt: skip
    """``B = Σ p_k s_k B_k`` (float64 math) with the frozen ``A [r, d_in]``, ``alpha = r`` (scale 1);
    ``rule`` ``median`` / ``trimmed_mean``: that robust average of ``s_k B_k`` instead."""
    B = robust_average([f.scale * f.B.to(torch.float64) for f in factors], weights, rule, beta)
    return LoraFactors(frozen_A.to(C.STATE_DTYPE), B.to(C.STATE_DTYPE), float(frozen_A.shape[0]))


class FFALoRA(OnServerState):
    """FFA-LoRA: frozen shared ``A``, federated average of ``B``.

    Args:
        seed: seed of the frozen ``A`` (the same for every client and round).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
        robust: ``mean`` (FedAvg of ``B``), or the robust ``median`` / ``trimmed_mean`` (fraction ``trim`` cut at each end).
    """

    name = "ffa"
    label = "FFA-LoRA"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
                 robust: str = "mean", trim: float = 0.1) -> None:  # fmt: skip
        check_robust(robust, trim, self.label)
        self.robust, self.trim = robust, float(trim)
        super().__init__(seed=seed, shapes=shapes)

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        C.homogeneous_ranks(plans, self.server.ranks(), "FFA-LoRA")
        return {cid: Payload(p, init=self.server.init_at_alpha(p), seed=self.seed, train_A=False)
                for cid, p in self.server.start(server_round, plans).items()}  # fmt: skip

    def frozen_A(self, module: str, d_out: int, d_in: int, rank: int) -> torch.Tensor:
        """The frozen ``A [rank, d_in]`` of ``module``: the global one, or the fresh init from ``seed``."""
        if module in self.server.adapter:
            return self.server.adapter[module].A
        return init_lora_factors(d_out, d_in, rank, 1.0, self.seed, module).A

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        ranks = C.homogeneous_ranks(list(self.server.book.plans.values()), {}, "FFA-LoRA")
        expected_A = {m: self.frozen_A(m, *shapes[m], ranks[m]) for m in ranks if m in shapes}
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True, train_A=False, expected_A=expected_A)
        groups = self.server.groups(valid)
        self.server.commit({m: average_B([f for _, f in g], C.example_weights(g), expected_A[m], self.robust, self.trim)
                            for m, g in groups.items()}, shapes)  # fmt: skip
        return self.server.result(valid, rejected)


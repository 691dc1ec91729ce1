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

from typing import Sequence

import torch

from fedlora.lora.factors import LoraFactors
from fedlora.lora.robust import robust_average
from fedlora.strategies import _common as C
from fedlora.strategies.homogeneous import HomogeneousAveraging

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


class FedIT(HomogeneousAveraging):
    """FedAvg on LoRA ``A`` and ``B`` (homogeneous rank); ``robust``: ``mean`` (FedAvg), ``median`` or ``trimmed_mean``."""

    name = "fedit"
    label = "FedIT"
    heterogeneous_ranks = False

    def merge(self, factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
        return fedavg_factors(factors, weights, self.robust, self.trim)

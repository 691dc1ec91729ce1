"""LoRA-FAIR (Bian, Wang, Zhang, Xu, "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025).

FedAvg of the factors, ``Ā = Σ_k p_k A_k``, ``B̄ = Σ_k p_k s_k B_k``, misses the ideal update
``ΔW = Σ_k p_k s_k B_k A_k`` (``B̄ Ā ≠ ΔW``). LoRA-FAIR keeps ``Ā`` and corrects ``B`` on the server,
``B' = B̄ + ΔB`` with ``ΔB`` minimising a distance between ``ΔW`` and ``(B̄ + ΔB) Ā`` plus a penalty
``λ ||ΔB||`` that keeps the correction small; ``(Ā, B')`` is both the global adapter and every
client's starting point next round (no restart from zero as in FLoRA, no change of the base as
in FedEx-LoRA). The paper minimises a similarity loss by iterative optimisation on the server;
here the distance is the squared Frobenius norm, whose minimiser is closed form
(:func:`fedlora.lora.compose.refit_B`)::

    B' = (ΔW Āᵀ + λ' B̄)(Ā Āᵀ + λ' I)⁻¹,    λ' = λ · tr(Ā Āᵀ) / r

with ``ΔW Āᵀ = Σ_k p_k s_k B_k (A_k Āᵀ)`` (no dense ``d_out x d_in`` matrix). ``λ = 0`` gives the
least-squares ``B``; a large ``λ`` gives FedIT. Shapes: ``A_k [r_k, d_in]``, ``B_k [d_out, r_k]``.

Heterogeneous ranks: supported. ``Ā`` and ``B̄`` are averaged row by row (column by column for
``B``) over the clients that have that component (:func:`fedlora.lora.compose.rowwise_average`), at
the round's largest rank ``r``. A client of rank ``r_j < r`` receives ``Ā[:r_j]`` and its own
correction ``B'_j = argmin_B ||ΔW − B Ā[:r_j]||² + λ' ||B − B̄[:, :r_j]||²``, the best ``B`` for the
rows it keeps, so the truncation loses as little of ``ΔW`` as its ``A`` allows. Corrections are
computed for every rank the server has planned so far; a client of a larger rank than the round's
gets ``(Ā, B')`` grown with fresh ``A`` rows (:func:`fedlora.lora.compose.client_head`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import client_head, refit_B, rowwise_average, stacked_residual
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import factor_gram_norm, rescale_alpha
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState

__all__ = ["LoRAFAIR", "fair_factors"]

_RESIDUAL_METRIC_MAX_RANK = 1024
"""Stacked rank up to which the round's relative residuals are reported (their cost grows as its square)."""


def fair_factors(factors: Sequence[LoraFactors], weights: Sequence[float], ranks: Sequence[int], lam: float
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:  # fmt: skip
    """``Ā [r, d_in]``, ``B̄ [d_out, r]`` at ``r = max_k r_k`` and ``{r_j: B'_j [d_out, r_j]}`` for each
    ``r_j`` of ``ranks`` (clipped to ``r``, and ``r`` itself), all at scale 1."""
    r = max(f.rank for f in factors)
    A = rowwise_average([f.A for f in factors], weights, r)
    B = rowwise_average([(f.scale * f.B.to(torch.float64)).T for f in factors], weights, r).T.contiguous()
    refined = {k: refit_B(factors, weights, A[:k], B[:, :k], lam) for k in sorted({min(int(x), r) for x in ranks} | {r})}
    return A, B, refined


def relative_residual(factors: Sequence[LoraFactors], weights: Sequence[float], approx: LoraFactors) -> float:
    """``||ΔW − s B A||_F / ||ΔW||_F`` from Gram matrices (0 when ``ΔW = 0``)."""
    ideal = factor_gram_norm(stacked_residual(factors, weights, LoraFactors(approx.A[:0], approx.B[:, :0], 1.0)))
    return factor_gram_norm(stacked_residual(factors, weights, approx)) / ideal if ideal > 0 else 0.0


class LoRAFAIR(OnServerState):
    """FedAvg with LoRA-FAIR's server-side correction of ``B`` (heterogeneous ranks by per-rank corrections).

    Args:
        seed: seed of the shared fresh init.
        lam: relative weight of the penalty keeping ``B'`` near ``B̄`` (``λ`` above; >= 0).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "lorafair"
    label = "LoRA-FAIR"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, lam: float = 0.01, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        if not lam >= 0:
            raise ValueError(f"LoRA-FAIR: lam must be >= 0, got {lam!r}")
        self.lam = float(lam)
        super().__init__(seed=seed, shapes=shapes)
        self._refined: dict[str, dict[int, torch.Tensor]] = {}
        self._ranks: dict[str, set[int]] = {}

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self.server.start(server_round, plans)
        for p in plans_by_id.values():
            for m, r in p.ranks.items():
                self._ranks.setdefault(m, set()).add(int(r))
        return {cid: Payload(p, init={m: self._client_init(m, int(r), float(p.alphas[m])) for m, r in p.ranks.items() if m in self.server.adapter},
                             seed=self.seed) for cid, p in plans_by_id.items()}  # fmt: skip

    def _client_init(self, module: str, rank: int, alpha: float) -> LoraFactors:
        g = self.server.adapter[module]
        B = self._refined.get(module, {}).get(rank)
        if B is None:
            return client_head(g, rank, alpha, self.seed, module)
        return rescale_alpha(LoraFactors(g.A[:rank], B, float(rank)), alpha)

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True)
        new, refined = {}, dict(self._refined)
        before, after = [], []
        for module, group in self.server.groups(valid).items():
            factors, weights = [f for _, f in group], C.example_weights(group)
            A, B_avg, per_rank = fair_factors(factors, weights, sorted(self._ranks.get(module, ())), self.lam)
            r = A.shape[0]
            new[module], refined[module] = LoraFactors(A, per_rank[r], float(r)), per_rank
            if sum(f.rank for f in factors) <= _RESIDUAL_METRIC_MAX_RANK:
                before.append(relative_residual(factors, weights, LoraFactors(A, B_avg, float(r))))
                after.append(relative_residual(factors, weights, new[module]))
        self._refined = refined
        self.server.commit(new, shapes)
        extra = {"fedavg_relative_residual": sum(before) / len(before), "fair_relative_residual": sum(after) / len(after)} if before else {}
        return self.server.result(valid, rejected, extra)

    def state_dict(self) -> dict[str, Any]:
        return self.server.to_state(self.name) | {
            "lam": self.lam,
            "refined": {m: {str(r): B for r, B in per.items()} for m, per in self._refined.items()},
            "ranks": {m: sorted(rs) for m, rs in self._ranks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load(state, self.name)
        self.lam = float(state["lam"])
        self._refined = {m: {int(r): B.clone() for r, B in per.items()} for m, per in state["refined"].items()}
        self._ranks = {m: {int(r) for r in rs} for m, rs in state["ranks"].items()}

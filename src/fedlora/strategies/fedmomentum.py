"""FedMomentum (Yan, Hua, Wang, Zhang, Wu, Song, Guan, "FedMomentum: Preserving LoRA Training Momentum
in Federated Fine-Tuning", 2026).

The server aggregates the clients' LoRA products exactly, ``ΔW = Σ_k p_k s_k B_k A_k`` (each ``B_k A_k``
is the client's whole LoRA, started from the global one), takes the SVD of ``ΔW`` and keeps its ``r``
dominant components as the next round's LoRA modules, ``B = U_r S_r``, ``A = V_rᵀ`` (so training goes
on along the main update directions instead of restarting from zero as in FLoRA), while the
residual ``ΔW − U_r S_r V_rᵀ`` is merged into the frozen base. The global model is therefore the
exact average of the clients' models: ``W_0 + Σ_t R_t + B A``.

Composed from fedlora's pieces: FlexLoRA's factored or randomized SVD of the implicit sum
(:func:`fedlora.strategies.flexlora.flexlora_aggregate`, top ``r`` triplets), FedEx-LoRA's exact
stacked residual (:func:`fedlora.lora.compose.stacked_residual`), kept as low-rank factors and sent
as ``payload.base_delta`` (re-compressed exactly by :func:`fedlora.strategies.flora.merge_stacked`).
The paper describes the split of ``S`` only as "reconstructing the LoRA modules"; here all singular
values go to ``B`` (FlexLoRA's convention; the product, hence the model, does not depend on it).

Heterogeneous ranks: as FlexLoRA. ``r`` is the largest rank that trained the module this round;
client ``j`` starts from the leading ``r_j`` components, on the same base as everyone.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import stacked_residual
from fedlora.lora.factors import Adapter, Update
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.flexlora import flexlora_aggregate, flexlora_client_factors
from fedlora.strategies.flora import merge_stacked

__all__ = ["FedMomentum"]


class FedMomentum:
    """Exact aggregate, its top-``r`` SVD as the next LoRA, the residual merged into the base.

    Args:
        seed: seed of the shared fresh init (and of the randomized SVD).
        svd_tol: a-posteriori tolerance of the randomized SVD path (relative to the top singular value).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "fedmomentum"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, svd_tol: float = 1e-5, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        if not svd_tol > 0:
            raise ValueError(f"FedMomentum: svd_tol must be > 0, got {svd_tol!r}")
        self.seed, self.svd_tol = int(seed), float(svd_tol)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._residual: Adapter = {}
        self._version = 0
        self._book = C.RoundBook()

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, plans, "FedMomentum")
        base = dict(self._residual) or None
        return {cid: Payload(p, init={m: flexlora_client_factors(self._global[m], int(r), float(p.alphas[m]), self.seed, m)
                                      for m, r in p.ranks.items() if m in self._global},
                             seed=self.seed, base_delta=base, base_delta_version=self._version)
                for cid, p in plans_by_id.items()}  # fmt: skip

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "FedMomentum", shapes, exact_rank=True)
        new, residual = dict(self._global), dict(self._residual)
        for module, group in C.by_module(valid, self._book.plans).items():
            factors, weights = [f for _, f in group], C.example_weights(group)
            rank = max(f.rank for f in factors)
            new[module], _ = flexlora_aggregate(factors, weights, rank, self.svd_tol, C.derive_seed(self.seed, "svd", server_round, module))
            residual[module] = merge_stacked(residual.get(module), stacked_residual(factors, weights, new[module]))
        if valid:
            self._global, self._residual, self._version = new, residual, int(server_round)
        self._shapes.update({m: shapes[m] for m in self._global})
        rank = max((f.rank for f in self._residual.values()), default=0)
        return RoundResult([u.client_id for u in valid], rejected, C.round_metrics(valid, rejected) | {"max_residual_rank": float(rank)})

    def global_adapter(self) -> Adapter:
        """``Σ_t R_t + B A`` as stacked factors with ``alpha = rank`` (scale 1)."""
        return {m: merge_stacked(self._residual.get(m), f) for m, f in self._global.items()}

    def state_dict(self) -> dict[str, Any]:
        return C.global_state(self) | {"residual": C.adapter_to_state(self._residual), "version": self._version, "svd_tol": self.svd_tol}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.load_global_state(self, state)
        self._residual = C.adapter_from_state(state["residual"])
        self._version, self.svd_tol = int(state["version"]), float(state["svd_tol"])

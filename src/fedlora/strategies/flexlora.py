"""FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks
and Client Resources", NeurIPS 2024).

Clients train LoRA at their own rank ``r_k`` (per module). The server forms the scale-aware weighted
sum ``ΔW = Σ_k p_k s_k B_k A_k`` (``p_k = n_k / Σ n_j``, ``s_k = alpha_k / r_k``) and takes its SVD
once per module per round, **without forming ΔW** (:func:`fedlora.lora.linalg.svd_of_weighted_sum`:
QR of the stacked factors and an ``R x R`` SVD, ``R = Σ r_k``; dense only when ``R >= min(d)``).
Client ``j`` then receives the best rank-``r_j`` approximation ``B_j = U_r S_r / s_j``,
``A_j = Vh_r`` (all singular values in ``B``, as the official code), so ``A_j`` is exactly
``r_j x d_in``. The global state is ``(U S, Vh)`` at the full stacked rank ``K = min(R, d_out, d_in)``
stored as factors with ``alpha = K`` (scale 1); base weights are never merged.

Fixed against the official release: ranks really are heterogeneous (its rank-modifying function is
never called), scales are folded in, the SVD is factored, and the state resumes exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import extend_rank, svd_of_weighted_sum
from fedlora.lora.randomized import top_svd_of_weighted_sum
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["FlexLoRA", "flexlora_aggregate", "flexlora_client_factors"]


def flexlora_aggregate(factors: Sequence[LoraFactors], weights: Sequence[float], state_rank: int = 0,
                       tol: float = 1e-5, seed: int = 0) -> tuple[LoraFactors, str]:  # fmt: skip
    """SVD of ``Σ p_k s_k B_k A_k`` as factors ``B = U S [d_out, K]``, ``A = Vh [K, d_in]``, alpha ``K``; and the path.

    ``state_rank = 0``: the exact factored SVD at the full stacked rank ``K = min(R, d_out, d_in)``.
    ``state_rank = k > 0``: the top ``k`` triplets only; when the stacked rank ``R`` exceeds ``2k`` they come
    from randomized subspace iteration on the implicit operator (:mod:`fedlora.lora.randomized`), accepted
    when its a-posteriori bound is ``<= tol`` (else the exact path), otherwise from the exact SVD, truncated.
    """
    scaled = [w * f.scale for f, w in zip(factors, weights)]
    Bs, As = [f.B for f in factors], [f.A for f in factors]
    R = sum(f.rank for f in factors)
    path = "exact"
    if state_rank and R > 2 * state_rank:
        U, S, Vh, bound = top_svd_of_weighted_sum(Bs, As, scaled, state_rank, tol=tol, seed=seed, dtype=torch.float32,
                                                  out_dtype=C.STATE_DTYPE)  # fp32 products: ~4e-7 relative, 2x faster
        path = "randomized" if bound <= tol else "exact"
    if path == "exact":
        U, S, Vh = svd_of_weighted_sum(Bs, As, scaled, out_dtype=C.STATE_DTYPE)
        if state_rank:
            U, S, Vh = U[:, :state_rank], S[:state_rank], Vh[:state_rank]
    return LoraFactors(Vh.contiguous(), U.mul(S.to(U.dtype)).contiguous(), float(S.shape[0])), path


def flexlora_client_factors(g: LoraFactors, rank: int, alpha: float, seed: int, module: str) -> LoraFactors:
    """Best rank-``rank`` factors of the global ``g`` (scale 1, SVD order) at scale ``alpha / rank``.

    ``B_j = U_r S_r / s_j``, ``A_j = Vh_r``. When the global holds fewer than ``rank`` directions,
    ``A`` is completed with fresh-init rows and ``B`` with zeros (same product, still trainable).
    """
    k = min(rank, g.rank)
    s = alpha / rank
    head = LoraFactors(g.A[:k], g.B[:, :k] * (g.scale / s), alpha * k / rank)
    return extend_rank(head, rank, seed, module)


class FlexLoRA:
    """FlexLoRA with the factored SVD, per-module heterogeneous ranks.

    Args:
        seed: seed of the shared fresh init (round 1, and rows beyond the global rank).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
        state_rank: rank of the kept global state (0: the full stacked rank, exact). Clients never
            receive more than their own rank, so the largest client rank loses nothing they see;
            with many clients per round this keeps the state and the exported adapter small and the
            SVD on the implicit operator (see :func:`flexlora_aggregate`).
        svd_tol: a-posteriori tolerance of the randomized path (relative to the top singular value).
    """

    name = "flexlora"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
                 state_rank: int = 0, svd_tol: float = 1e-5) -> None:  # fmt: skip
        if state_rank < 0 or not svd_tol > 0:
            raise ValueError(f"FlexLoRA: state_rank must be >= 0 and svd_tol > 0; got {state_rank}, {svd_tol}")
        self.state_rank, self.svd_tol = int(state_rank), float(svd_tol)
        self.seed = int(seed)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._book = C.RoundBook()

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, plans, "FlexLoRA")
        return {cid: Payload(plan, init=self._init_for(plan), seed=self.seed) for cid, plan in plans_by_id.items()}

    def _init_for(self, plan: ClientPlan) -> Adapter:
        return {
            m: flexlora_client_factors(self._global[m], int(r), float(plan.alphas[m]), self.seed, m)
            for m, r in plan.ranks.items()
            if m in self._global
        }

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "FlexLoRA", shapes)
        new = dict(self._global)
        stacked, randomized = 0, 0
        for module, group in C.by_module(valid, self._book.plans).items():
            new[module], path = flexlora_aggregate([f for _, f in group], C.example_weights(group), self.state_rank, self.svd_tol,
                                                   C.derive_seed(self.seed, "svd", server_round, module))  # fmt: skip
            stacked = max(stacked, sum(f.rank for _, f in group))
            randomized += path == "randomized"
        self._global = new
        self._shapes.update({m: shapes[m] for m in new})
        metrics = C.round_metrics(valid, rejected) | {"max_stacked_rank": float(stacked), "randomized_svd_modules": float(randomized)}
        return RoundResult([u.client_id for u in valid], rejected, metrics)

    def global_adapter(self) -> Adapter:
        """``B = U S``, ``A = Vh`` at rank ``K`` with ``alpha = K`` (scale 1): ``ΔW = B @ A``."""
        return dict(self._global)

    def state_dict(self) -> dict[str, Any]:
        return C.global_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.load_global_state(self, state)

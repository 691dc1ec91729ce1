"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024).

Stacking aggregation: per module, stack the clients' factors, ``A`` rows weighted by ``p_k`` and
``B`` columns unweighted with the scale folded in:
``B_st = [s_1 B_1 | ... | s_K B_K]`` (``d_out x R``), ``A_st = [p_1 A_1; ...; p_K A_K]`` (``R x d_in``),
so ``B_st @ A_st = Σ_k p_k s_k B_k A_k`` **exactly**, for any mix of ranks and alphas.

Alpha bookkeeping: the reference code stacks the factors but keeps the clients' ``lora_alpha`` with
the stacked rank, so the merged update is silently scaled by ``alpha / R``. Here the stacked factors
carry ``alpha = R`` (scale 1) and each ``s_k`` lives in ``B``.

The round's stacked update is merged into the base weights: the server keeps the cumulative merged
update as stacked factors (sent as ``payload.base_delta``, ``base_delta_version`` = the round it last
changed) and re-compresses it exactly (SVD, rank ``min(d_out, d_in)``, no truncation) whenever its
rank exceeds ``min(d_out, d_in)``. Every client starts each round from a fresh LoRA (empty ``init``,
a new seed per round). ``global_adapter()`` is the cumulative merged update.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import svd_of_weighted_sum
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["FLoRA", "stack_factors", "merge_stacked"]


def stack_factors(factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
    """``B_st = [s_k B_k]``, ``A_st = [p_k A_k]`` with ``alpha = R = Σ r_k``: ``B_st A_st = Σ p_k s_k B_k A_k``."""
    B = torch.cat([f.scale * f.B.to(torch.float64) for f in factors], dim=1)
    A = torch.cat([float(w) * f.A.to(torch.float64) for f, w in zip(factors, weights)], dim=0)
    return LoraFactors(A.to(C.STATE_DTYPE), B.to(C.STATE_DTYPE), float(A.shape[0]))


def merge_stacked(previous: LoraFactors | None, increment: LoraFactors) -> LoraFactors:
    """Concatenate two scale-1 stacked updates; re-compress exactly when the rank exceeds ``min(d)``.

    The compression is the full SVD of a rank-``≤ min(d)`` matrix at rank ``min(d)``: no loss
    beyond float rounding. Result has ``alpha = rank`` (scale 1).
    """
    if previous is None:
        return increment
    A = torch.cat([previous.A, increment.A], dim=0)
    B = torch.cat([previous.B, increment.B], dim=1)
    rank, d = A.shape[0], min(B.shape[0], A.shape[1])
    if rank <= d:
        return LoraFactors(A, B, float(rank))
    U, S, Vh = svd_of_weighted_sum([B], [A], [1.0], out_dtype=C.STATE_DTYPE)
    return LoraFactors(Vh, U.mul_(S.to(U.dtype)), float(S.shape[0]))


class FLoRA:
    """FLoRA: exact stacking, merge into the base, fresh LoRA every round.

    Args:
        seed: base seed; round ``t`` uses a fresh-init seed derived from ``(seed, t)``.
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "flora"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        self.seed = int(seed)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._merged: Adapter = {}
        self._version = 0
        self._book = C.RoundBook()

    def round_seed(self, server_round: int) -> int:
        """Seed of round ``server_round``'s fresh LoRA (the same for every client of the round)."""
        return C.derive_seed(self.seed, "flora", int(server_round))

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, plans, "FLoRA")
        seed = self.round_seed(server_round)
        base = dict(self._merged) if self._merged else None
        return {cid: Payload(p, init={}, seed=seed, base_delta=base, base_delta_version=self._version) for cid, p in plans_by_id.items()}

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "FLoRA", shapes)
        new = dict(self._merged)
        for module, group in C.by_module(valid, self._book.plans).items():
            increment = stack_factors([f for _, f in group], C.example_weights(group))
            new[module] = merge_stacked(new.get(module), increment)
        if valid:
            self._merged, self._version = new, int(server_round)
        self._shapes.update({m: shapes[m] for m in self._merged})
        metrics = C.round_metrics(valid, rejected) | {"max_merged_rank": float(max((f.rank for f in self._merged.values()), default=0))}
        return RoundResult([u.client_id for u in valid], rejected, metrics)

    def global_adapter(self) -> Adapter:
        """The cumulative merged update as stacked factors, ``alpha = rank`` (scale 1)."""
        return dict(self._merged)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "merged": C.adapter_to_state(self._merged),
            "version": self._version,
            "shapes": C.shapes_to_state(self._shapes),
            "book": self._book.to_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.seed = int(state["seed"])
        self._merged = C.adapter_from_state(state["merged"])
        self._version = int(state["version"])
        self._shapes = C.normalize_shapes(state["shapes"])
        self._book = C.RoundBook.from_state(state["book"])

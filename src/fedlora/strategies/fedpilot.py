"""Fed-pilot aggregation, fedlora's version: per-module averaging over the clients that trained each
module, with a compensation for modules updated rarely or long ago.

Fed-pilot (memory-aware LoRA allocation) has no public code and its formulas are not available to
us; this is fedlora's design (docs/fedpilot.md), documented as such. Clients train only the modules
their plan marks trainable (``allocation.planner.plan_fedpilot``); the others are applied frozen.

For module ``m`` in round ``t`` with trainers ``K_m`` (weights ``p_k = n_k / Σ_{K_m} n_j``) and
previous global value ``G_m`` (scale-aware, ``ΔW = s·B @ A``)::

    avg_m  = Σ_{k ∈ K_m} p_k s_k B_k A_k                      (FedAvg over the trainers only)
    new_m  = G_m + β_m (avg_m - G_m)                           (a server step on the module)
    β_m    = min(β_max, 1 + λ · ((t - last_m - 1) + (1 - c_m)))

where ``last_m`` is the last round ``m`` was updated (so ``t - last_m - 1`` counts the rounds it was
skipped) and ``c_m = Σ_{K_m} n_k / Σ_{accepted} n_k`` is the share of this round's examples that
trained it. A module trained by everyone every round gets ``β = 1`` (plain per-module FedAvg);
one skipped or trained by few clients takes a larger step. ``λ = 0`` is neutral. A module without a
previous value takes ``avg_m``; a module nobody trained keeps its value.

Factors: when every trainer (and the previous value) has the same rank ``r``, ``A`` and ``B`` are
combined factor-wise as in FedIT (``A = (1-β) A_G + β Σ p_k A_k``, ``B`` likewise with the scales
folded in, alpha ``r``). Otherwise the scale-aware sum is factorised without a dense matrix
(``lora.linalg.svd_of_weighted_sum``) and kept at the largest rank that trained the module
(FlexLoRA-style: ``B = U S``, ``A = Vh``); each client receives its best rank-``r_j`` approximation.
``global_importance()`` is an exponential average of ``||new_m - G_m||_F``, sent back to clients as
the global part of the module values (``allocation.importance_mix.mix``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import extend_rank, rescale_alpha, svd_of_weighted_sum
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["FedPilot", "compensation", "combine_factors", "change_norm"]


def compensation(skipped: int, coverage: float, strength: float, beta_max: float) -> float:
    """``β = min(β_max, 1 + λ (skipped + 1 - coverage))``; 1 when the module is trained by all, every round."""
    return min(beta_max, 1.0 + strength * (max(skipped, 0) + (1.0 - coverage)))


def combine_factors(terms: Sequence[tuple[LoraFactors, float]], rank_cap: int) -> LoraFactors:
    """Factors of ``Σ_i w_i s_i B_i A_i`` (weights may be negative).

    Same rank everywhere: factor-wise ``A = Σ w_i A_i``, ``B = Σ w_i s_i B_i`` (FedIT's rule, exact
    for one term), alpha ``r``. Otherwise the factored SVD truncated to ``rank_cap`` directions:
    ``B = U S [d_out, K]``, ``A = Vh [K, d_in]``, alpha ``K`` (scale 1).
    """
    ranks = {f.rank for f, _ in terms}
    if len(ranks) == 1:
        A = sum(w * f.A.to(torch.float64) for f, w in terms)
        B = sum(w * f.scale * f.B.to(torch.float64) for f, w in terms)
        rank = ranks.pop()
        return LoraFactors(A.to(C.STATE_DTYPE), B.to(C.STATE_DTYPE), float(rank))
    U, S, Vh = svd_of_weighted_sum([f.B for f, _ in terms], [f.A for f, _ in terms], [w * f.scale for f, w in terms])
    k = max(1, min(int(rank_cap), S.shape[0]))
    return LoraFactors(Vh[:k].to(C.STATE_DTYPE), (U[:, :k] * S[:k]).to(C.STATE_DTYPE), float(k))


def change_norm(new: LoraFactors, old: LoraFactors | None) -> float:
    """``||s_n B_n A_n - s_o B_o A_o||_F`` from ``r x r`` Gram matrices (no dense ``d_out x d_in``)."""
    P = new.scale * new.B.to(torch.float64)
    Q = new.A.to(torch.float64)
    if old is not None:
        P = torch.cat([P, -old.scale * old.B.to(torch.float64)], dim=1)
        Q = torch.cat([Q, old.A.to(torch.float64)], dim=0)
    return math.sqrt(max(float(((P.T @ P) * (Q @ Q.T)).sum()), 0.0))


def _client_factors(g: LoraFactors, rank: int, alpha: float, seed: int, module: str) -> LoraFactors:
    """The global module at the client's rank and alpha: exact if ranks match, else best rank-r."""
    if g.rank == rank:
        return rescale_alpha(g, alpha)
    U, S, Vh = svd_of_weighted_sum([g.B], [g.A], [g.scale])
    k = min(rank, S.shape[0])
    s = alpha / rank
    head = LoraFactors(Vh[:k].to(C.STATE_DTYPE), (U[:, :k] * (S[:k] / s)).to(C.STATE_DTYPE), alpha * k / rank)
    return extend_rank(head, rank, seed, module)


class FedPilot:
    """Per-module FedAvg over each module's trainers, with staleness/coverage compensation.

    Args:
        seed: seed of the shared fresh LoRA init.
        compensation: ``λ``, strength of the compensation (0 = plain per-module FedAvg).
        beta_max: cap on the server step ``β``.
        importance_decay: weight of the previous value in the exponential average of ``global_importance``.
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "fedpilot"
    heterogeneous_ranks = True

    def __init__(
        self, *, seed: int = 0, compensation: float = 0.25, beta_max: float = 1.5, importance_decay: float = 0.5,
        shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
    ) -> None:  # fmt: skip
        if not (compensation >= 0 and math.isfinite(compensation)):
            raise ValueError(f"FedPilot: compensation must be a finite number >= 0, got {compensation!r}; use 0 for plain per-module FedAvg")
        if not (beta_max >= 1 and math.isfinite(beta_max)):
            raise ValueError(f"FedPilot: beta_max must be >= 1, got {beta_max!r}")
        if not 0 <= importance_decay < 1:
            raise ValueError(f"FedPilot: importance_decay must be in [0, 1), got {importance_decay!r}")
        self.seed, self.strength, self.beta_max, self.decay = int(seed), float(compensation), float(beta_max), float(importance_decay)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._last: dict[str, int] = {}  # module -> last round it was updated
        self._count: dict[str, int] = {}  # module -> rounds it was updated
        self._rank_cap: dict[str, int] = {}  # module -> largest rank that trained it
        self._importance: dict[str, float] = {}
        self._book = C.RoundBook()

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, plans, "FedPilot")
        return {cid: Payload(plan, init=self._init_for(plan), seed=self.seed) for cid, plan in plans_by_id.items()}

    def _init_for(self, plan: ClientPlan) -> Adapter:
        return {
            m: _client_factors(self._global[m], int(r), float(plan.alphas[m]), self.seed, m)
            for m, r in plan.ranks.items()
            if m in self._global
        }

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "FedPilot", shapes)
        total = float(sum(u.num_examples for u in valid))
        new, betas, skipped_max = dict(self._global), [], 0
        for module, group in C.by_module(valid, self._book.plans).items():
            weights = C.example_weights(group)
            old = self._global.get(module)
            self._rank_cap[module] = max([self._rank_cap.get(module, 0)] + [f.rank for _, f in group])
            skipped = server_round - self._last[module] - 1 if module in self._last else 0
            beta = 1.0 if old is None else compensation(skipped, sum(u.num_examples for u, _ in group) / total, self.strength, self.beta_max)
            terms = [(f, beta * w) for (_, f), w in zip(group, weights)] + ([] if old is None or beta == 1.0 else [(old, 1.0 - beta)])
            new[module] = combine_factors(terms, self._rank_cap[module])
            change = change_norm(new[module], old)
            prev = self._importance.get(module)
            self._importance[module] = change if prev is None else self.decay * prev + (1 - self.decay) * change
            self._last[module], self._count[module] = int(server_round), self._count.get(module, 0) + 1
            betas.append(beta)
            skipped_max = max(skipped_max, skipped)
        self._global = new
        self._shapes.update({m: shapes[m] for m in new if m in shapes})
        metrics = C.round_metrics(valid, rejected)
        metrics.update({"fedpilot/modules_updated": float(len(betas)), "fedpilot/mean_beta": sum(betas) / len(betas) if betas else 1.0,
                        "fedpilot/max_skipped_rounds": float(skipped_max)})  # fmt: skip
        return RoundResult([u.client_id for u in valid], rejected, metrics)

    def global_adapter(self) -> Adapter:
        """Global factors per module (alpha = rank, scale 1): ``ΔW = B @ A``."""
        return dict(self._global)

    def global_importance(self) -> dict[str, float]:
        """Module -> exponential average of the norm of its aggregated change (modules updated so far)."""
        return dict(sorted(self._importance.items()))

    def module_stats(self) -> dict[str, dict[str, int]]:
        """Module -> ``{"updates": rounds updated, "last_round": last round updated}``."""
        return {m: {"updates": self._count[m], "last_round": self._last[m]} for m in sorted(self._last)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "seed": self.seed, "compensation": self.strength, "beta_max": self.beta_max,
            "importance_decay": self.decay, "global": C.adapter_to_state(self._global),
            "shapes": C.shapes_to_state(self._shapes), "last": dict(self._last), "count": dict(self._count),
            "rank_cap": dict(self._rank_cap), "importance": dict(self._importance), "book": self._book.to_state(),
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.seed, self.strength = int(state["seed"]), float(state["compensation"])
        self.beta_max, self.decay = float(state["beta_max"]), float(state["importance_decay"])
        self._global = C.adapter_from_state(state["global"])
        self._shapes = C.normalize_shapes(state["shapes"])
        self._last = {str(k): int(v) for k, v in state["last"].items()}
        self._count = {str(k): int(v) for k, v in state["count"].items()}
        self._rank_cap = {str(k): int(v) for k, v in state["rank_cap"].items()}
        self._importance = {str(k): float(v) for k, v in state["importance"].items()}
        self._book = C.RoundBook.from_state(state["book"])

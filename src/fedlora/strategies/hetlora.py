"""HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", EMNLP 2024).

Server: per module, zero-pad every client's factors to ``r_max`` (the largest rank planned this
round) and average them with **sparsity weights** ``w_k ∝ ||s_k B_k A_k||_F`` (normalised to sum
to 1; example counts are not used, as in the paper; if every norm is 0, ``p_k = n_k / Σ n_j``):
``A = Σ w_k pad(A_k)``, ``B = Σ w_k s_k pad(B_k)``. Scale convention: each client's scale
``s_k = alpha_k / r_k`` is folded into ``B`` before averaging, so mixed alphas and ranks combine on
the scale-aware update; the global state keeps ``alpha = r_max`` (scale 1). Client ``j`` receives
the first ``r_j`` rows of ``A`` and columns of ``B`` (``B`` divided by its own ``s_j``).

Client: the local loss adds ``λ ||B[:, ⌊γr⌋:]||_F ||A[⌊γr⌋:]||_F`` (:func:`tail_norm_penalty`), and
rank self-pruning (:func:`prune_rank`) drops the tail when its norm falls. A client that sends a
lower rank than planned keeps that lower rank in later rounds (remembered per client and module,
alpha scaled to keep its scale). ``payload.options``: ``hetlora_gamma``, ``hetlora_lambda``,
``hetlora_prune``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import extend_rank, factor_gram_norm
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["HetLoRA", "hetlora_aggregate", "tail_norm_penalty", "prune_rank"]


def tail_norm_penalty(A: torch.Tensor, B: torch.Tensor, gamma: float) -> torch.Tensor:
    """``||B[:, ⌊γr⌋:]||_F · ||A[⌊γr⌋:]||_F`` for ``A [r, d_in]``, ``B [d_out, r]`` (differentiable).

    Multiply by ``λ`` (``payload.options["hetlora_lambda"]``) and add to the local loss.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"tail_norm_penalty: gamma must be in (0, 1], got {gamma}; HetLoRA uses ~0.99")
    k = math.floor(gamma * A.shape[0])
    return torch.linalg.vector_norm(B[:, k:]) * torch.linalg.vector_norm(A[k:])


def prune_rank(A: torch.Tensor, B: torch.Tensor, gamma: float, threshold: float) -> int:
    """Rank after one self-pruning step: ``max(1, ⌊γr⌋)`` if the tail norm is below ``threshold``, else ``r``.

    HetLoRA passes last round's tail norm as ``threshold``. Shrink the factors with
    :func:`fedlora.lora.linalg.truncate_rank`, which keeps the scale.
    """
    r = int(A.shape[0])
    tail = float(tail_norm_penalty(A.detach(), B.detach(), gamma))
    return max(1, math.floor(gamma * r)) if tail < threshold else r


def hetlora_aggregate(factors: Sequence[LoraFactors], r_max: int, fallback: Sequence[float]) -> tuple[LoraFactors, list[float]]:
    """Norm-weighted average of zero-padded scale-folded factors at rank ``r_max``.

    Returns factors ``A [r_max, d_in]``, ``B [d_out, r_max]`` with ``alpha = r_max`` and the weights used.
    """
    norms = [factor_gram_norm(f) for f in factors]
    total = sum(norms)
    weights = [n / total for n in norms] if total > 0 else list(fallback)
    d_out, d_in = factors[0].d_out, factors[0].d_in
    A = torch.zeros(r_max, d_in, dtype=torch.float64)
    B = torch.zeros(d_out, r_max, dtype=torch.float64)
    for f, w in zip(factors, weights):
        A[: f.rank] += w * f.A.to(torch.float64)
        B[:, : f.rank] += (w * f.scale) * f.B.to(torch.float64)
    return LoraFactors(A.to(C.STATE_DTYPE), B.to(C.STATE_DTYPE), float(r_max)), weights


class HetLoRA:
    """HetLoRA: zero-padding, norm-weighted aggregation, per-client truncation, self-pruning.

    Args:
        seed: seed of the shared fresh init.
        gamma: tail fraction ``γ`` of the penalty and pruning (paper: 0.99).
        regularization: ``λ`` of the tail-norm penalty.
        prune: whether clients self-prune their rank.
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "hetlora"
    heterogeneous_ranks = True

    def __init__(
        self,
        *,
        seed: int = 0,
        gamma: float = 0.99,
        regularization: float = 1e-3,
        prune: bool = True,
        shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"HetLoRA: gamma must be in (0, 1], got {gamma}; the paper uses 0.99")
        if regularization < 0:
            raise ValueError(f"HetLoRA: regularization (λ) must be >= 0, got {regularization}")
        self.seed, self.gamma, self.regularization, self.prune = int(seed), float(gamma), float(regularization), bool(prune)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._pruned: dict[str, dict[str, int]] = {}
        self._book = C.RoundBook()

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        plans_by_id = self._book.start(server_round, [self._capped(p) for p in plans], "HetLoRA")
        options = {"hetlora_gamma": self.gamma, "hetlora_lambda": self.regularization, "hetlora_prune": self.prune}
        return {cid: Payload(p, init=self._init_for(p), seed=self.seed, options=dict(options)) for cid, p in plans_by_id.items()}

    def _capped(self, plan: ClientPlan) -> ClientPlan:
        """The plan with ranks capped at the client's self-pruned ranks (alpha scaled to keep ``s``)."""
        pruned = self._pruned.get(plan.client_id, {})
        ranks = {m: min(int(r), pruned.get(m, int(r))) for m, r in plan.ranks.items()}
        if ranks == dict(plan.ranks):
            return plan
        alphas = {m: float(plan.alphas[m]) * ranks[m] / int(plan.ranks[m]) for m in ranks}
        return ClientPlan(plan.client_id, ranks, alphas, plan.trainable)

    def _init_for(self, plan: ClientPlan) -> Adapter:
        init = {}
        for m, r in plan.ranks.items():
            if m in self._global:
                g, s = self._global[m], float(plan.alphas[m]) / int(r)
                k = min(int(r), g.rank)
                head = LoraFactors(g.A[:k], g.B[:, :k] * (g.scale / s), s * k)
                init[m] = extend_rank(head, int(r), self.seed, m)
        return init

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "HetLoRA", shapes)
        new = dict(self._global)
        metrics = C.round_metrics(valid, rejected)
        for module, group in C.by_module(valid, self._book.plans).items():
            r_max = max(int(p.ranks[module]) for p in self._book.plans.values() if module in p.ranks)
            new[module], weights = hetlora_aggregate([f for _, f in group], r_max, C.example_weights(group))
            metrics[f"max_weight/{module}"] = max(weights)
        for u in valid:
            for m, f in u.factors.items():
                if f.rank < int(self._book.plans[u.client_id].ranks[m]):
                    self._pruned.setdefault(u.client_id, {})[m] = f.rank
        self._global = new
        self._shapes.update({m: shapes[m] for m in new})
        return RoundResult([u.client_id for u in valid], rejected, metrics)

    def global_adapter(self) -> Adapter:
        """Global factors at ``r_max`` with ``alpha = r_max`` (scale 1): ``ΔW = B @ A``."""
        return dict(self._global)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "gamma": self.gamma,
            "regularization": self.regularization,
            "prune": self.prune,
            "global": C.adapter_to_state(self._global),
            "pruned": {c: dict(ms) for c, ms in self._pruned.items()},
            "shapes": C.shapes_to_state(self._shapes),
            "book": self._book.to_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.seed, self.gamma = int(state["seed"]), float(state["gamma"])
        self.regularization, self.prune = float(state["regularization"]), bool(state["prune"])
        self._global = C.adapter_from_state(state["global"])
        self._pruned = {c: {m: int(r) for m, r in ms.items()} for c, ms in state["pruned"].items()}
        self._shapes = C.normalize_shapes(state["shapes"])
        self._book = C.RoundBook.from_state(state["book"])

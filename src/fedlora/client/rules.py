"""Client-side parts of federated LoRA methods, called by the trainer without knowing the method.

A method's client-side behaviour is a list of small rules built from ``payload.options`` (plain
values, so they cross Flower's wire unchanged). Each rule may narrow the modules that train from a
score of each module on local data (:meth:`ClientRule.select`), add a term to the local loss
(:meth:`ClientRule.penalty`) and transform the trained factors before they are sent
(:meth:`ClientRule.finish`). Which factors train is the payload's ``train_A`` / ``train_B``.

Rules (option keys in brackets):

* :class:`TailPenalty` (``hetlora_lambda``, ``hetlora_gamma``): HetLoRA's rank regulariser
  ``λ Σ_m ||B_m[:, ⌊γr⌋:]||_F ||A_m[⌊γr⌋:]||_F`` (Cho et al., EMNLP 2024).
* :class:`RankPruning` (``hetlora_prune``, ``hetlora_gamma``, ``hetlora_prune_threshold``):
  HetLoRA's self-pruning of the rank after training.
* :class:`ProximalTerm` (``proximal_mu``): FedProx's ``μ/2 Σ_m (||A_m − A_m⁰||² + ||B_m − B_m⁰||²)``
  toward the round's starting factors (Li et al., MLSys 2020), on the trainable factors.
* :class:`FisherLayerSelection` (``fisher_layers``, ``fisher_batches``): Fed-HeLLo's FIM-HLA, train
  only the ``L`` decoder layers with the largest empirical Fisher score on local data.
* :class:`RotationAlignment` (``rotation_align``, ``rotation_strength``): FedRot-LoRA's orthogonal
  Procrustes alignment of the trained factors to the round's starting ones before they are sent.

A new rule subclasses :class:`RuleBase` (no-op defaults), adds ``from_options`` (``None`` when its
keys are absent) and overrides what it needs; it is appended to :data:`RULE_TYPES`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import torch

from fedlora.client.peft_bridge import ADAPTER_NAME
from fedlora.lora.factors import Adapter
from fedlora.lora.linalg import truncate_rank

__all__ = ["ClientRule", "RuleBase", "TailPenalty", "RankPruning", "ProximalTerm", "FisherLayerSelection", "RotationAlignment",
           "procrustes_rotation", "RULE_TYPES", "client_rules", "total_penalty", "select_trainable"]

ModuleScorer = Callable[[Sequence[str], int], Mapping[str, float]]
"""``(modules, batches) -> {module: score}``: the trainer's empirical Fisher of each module's LoRA
parameters over that many batches of local data (:func:`fedlora.client.importance.module_importance`)."""


class ClientRule(Protocol):
    """One client-side part of a method."""

    def select(self, modules: frozenset[str], score: ModuleScorer) -> frozenset[str]:
        """The modules that train, a subset of ``modules`` (the plan's trainable ones)."""
        ...

    def penalty(self, layers: Mapping[str, torch.nn.Module], modules: Sequence[str], initial: Adapter) -> torch.Tensor | None:
        """A differentiable term added to the local loss (``None``: none)."""
        ...

    def finish(self, trained: Adapter, initial: Adapter) -> Adapter:
        """The factors to send, from the trained ones and the round's starting ones."""
        ...


def _lora_weights(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight


class RuleBase:
    """No-op defaults of :class:`ClientRule`: every module trains, no loss term, factors sent as trained."""

    def select(self, modules: frozenset[str], score: ModuleScorer) -> frozenset[str]:
        return modules

    def penalty(self, layers, modules, initial) -> torch.Tensor | None:
        return None

    def finish(self, trained: Adapter, initial: Adapter) -> Adapter:
        return trained


class TailPenalty(RuleBase):
    """HetLoRA's tail-norm penalty ``λ Σ_m ||B[:, ⌊γr⌋:]||_F · ||A[⌊γr⌋:]||_F``."""

    def __init__(self, lam: float, gamma: float) -> None:
        self.lam, self.gamma = float(lam), float(gamma)

    @classmethod
    def from_options(cls, options: Mapping) -> "TailPenalty | None":
        lam = float(options.get("hetlora_lambda", 0.0))
        return cls(lam, float(options.get("hetlora_gamma", 0.99))) if lam > 0 else None

    def penalty(self, layers, modules, initial):
        from fedlora.strategies.hetlora import tail_norm_penalty

        return self.lam * sum(tail_norm_penalty(*_lora_weights(layers[m]), self.gamma) for m in modules)


class RankPruning(RuleBase):
    """HetLoRA self-pruning: a module's rank shrinks to ``max(1, ⌊γr⌋)`` when its tail norm fell below
    ``threshold`` (else below the tail norm the client started from). The scale is kept."""

    def __init__(self, gamma: float, threshold: float | None) -> None:
        self.gamma, self.threshold = float(gamma), None if threshold is None else float(threshold)

    @classmethod
    def from_options(cls, options: Mapping) -> "RankPruning | None":
        if not options.get("hetlora_prune", False):
            return None
        return cls(float(options.get("hetlora_gamma", 0.99)), options.get("hetlora_prune_threshold"))

    def finish(self, trained: Adapter, initial: Adapter) -> Adapter:
        from fedlora.strategies.hetlora import prune_rank, tail_norm_penalty

        out = {}
        for m, f in trained.items():
            threshold = self.threshold
            if threshold is None:
                threshold = float(tail_norm_penalty(initial[m].A.float(), initial[m].B.float(), self.gamma))
            r = prune_rank(f.A, f.B, self.gamma, threshold)
            out[m] = truncate_rank(f, r) if r < f.rank else f
        return out


class ProximalTerm(RuleBase):
    """FedProx on LoRA factors: ``μ/2 Σ_m (||A_m − A_m⁰||_F² + ||B_m − B_m⁰||_F²)`` over trainable factors."""

    def __init__(self, mu: float) -> None:
        if not mu >= 0:
            raise ValueError(f"proximal_mu must be >= 0, got {mu}")
        self.mu = float(mu)

    @classmethod
    def from_options(cls, options: Mapping) -> "ProximalTerm | None":
        mu = float(options.get("proximal_mu", 0.0))
        return cls(mu) if mu > 0 else None

    def penalty(self, layers, modules, initial):
        total = None
        for m in modules:
            A, B = _lora_weights(layers[m])
            for w, w0 in ((A, initial[m].A), (B, initial[m].B)):
                if w.requires_grad:
                    term = (w - w0.to(w.device, w.dtype)).square().sum()
                    total = term if total is None else total + term
        return None if total is None else 0.5 * self.mu * total


class FisherLayerSelection(RuleBase):
    """Fed-HeLLo's FIM-HLA (Zhang et al., "Fed-HeLLo: Efficient Federated Foundation Model Fine-Tuning
    with Heterogeneous LoRA Allocation", 2025): score each decoder layer ``l`` by the empirical Fisher
    of its LoRA parameters on local data, ``F_l = Σ_{m ∈ l} (1/N) Σ_b ||g_{m,b}||²`` over ``N`` batches
    at the round's starting adapter, and train only the ``L`` layers with the largest ``F_l`` (ties:
    lower layer first); the other layers' adapters stay applied, frozen. Modules outside a decoder
    layer are never dropped. The scoring pass back-propagates into every candidate module once.
    """

    def __init__(self, layers: int, batches: int) -> None:
        if layers < 1 or batches < 1:
            raise ValueError(f"fisher_layers and fisher_batches must be >= 1, got {layers} and {batches}")
        self.layers, self.batches = int(layers), int(batches)

    @classmethod
    def from_options(cls, options: Mapping) -> "FisherLayerSelection | None":
        layers = options.get("fisher_layers")
        return None if layers is None else cls(int(layers), int(options.get("fisher_batches", 2)))

    def select(self, modules: frozenset[str], score: ModuleScorer) -> frozenset[str]:
        from fedlora.strategies.fedra import layer_index

        in_layers = {m: layer_index(m) for m in modules}
        candidates = sorted({i for i in in_layers.values() if i is not None})
        if len(candidates) <= self.layers:
            return modules
        per_layer = dict.fromkeys(candidates, 0.0)
        for m, value in score(sorted(m for m, i in in_layers.items() if i is not None), self.batches).items():
            per_layer[in_layers[m]] += float(value)
        keep = set(sorted(candidates, key=lambda i: (-per_layer[i], i))[: self.layers])
        return frozenset(m for m, i in in_layers.items() if i is None or i in keep)


def procrustes_rotation(M: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The orthogonal ``R`` maximising ``tr(Rᵀ M)``, ``R = U Vᵀ`` for ``M = U S Vᵀ`` (orthogonal
    Procrustes). ``strength`` ``λ < 1``: the rotation (reflection removed) interpolated toward the
    identity, ``(1 − λ) I + λ R``, projected back onto the orthogonal matrices."""
    U, _, Vh = torch.linalg.svd(M.to(torch.float64))
    R = U @ Vh
    if strength >= 1.0:
        return R
    if torch.linalg.det(R) < 0:
        Vh = Vh.clone()
        Vh[-1] *= -1
        R = U @ Vh
    U2, _, Vh2 = torch.linalg.svd((1.0 - strength) * torch.eye(R.shape[0], dtype=R.dtype) + strength * R)
    return U2 @ Vh2


class RotationAlignment(RuleBase):
    """FedRot-LoRA (Zhang, Kim, Cha, Vikalo, "FedRot-LoRA: Mitigating Rotational Misalignment in
    Federated LoRA", ICML 2026): after training, rotate the rank space so that the trained factor
    ``A`` (or ``B``) is closest to the round's starting one, ``A⁰`` (``B⁰``), then send ``A' = Rᵀ A``,
    ``B' = B R``. ``R`` is the orthogonal Procrustes solution for ``M = A A⁰ᵀ`` (``M = Bᵀ B⁰``)
    (:func:`procrustes_rotation`); ``B' A' = B A``, so the client's update is unchanged while the
    factors that the server averages share one coordinate system."""

    def __init__(self, factor: str, strength: float) -> None:
        if factor not in ("A", "B") or not strength > 0:
            raise ValueError(f"rotation_align must be 'A' or 'B' and rotation_strength > 0; got {factor!r}, {strength!r}")
        self.factor, self.strength = factor, float(strength)

    @classmethod
    def from_options(cls, options: Mapping) -> "RotationAlignment | None":
        factor = options.get("rotation_align")
        return None if factor is None else cls(str(factor), float(options.get("rotation_strength", 1.0)))

    def finish(self, trained: Adapter, initial: Adapter) -> Adapter:
        out = {}
        for m, f in trained.items():
            A, B = f.A.to(torch.float64), f.B.to(torch.float64)
            ref = initial[m]
            M = A @ ref.A.to(torch.float64).T if self.factor == "A" else B.T @ ref.B.to(torch.float64)
            R = procrustes_rotation(M, self.strength)
            out[m] = type(f)((R.T @ A).to(f.A.dtype), (B @ R).to(f.B.dtype), f.alpha)
        return out


RULE_TYPES: tuple[type, ...] = (FisherLayerSelection, TailPenalty, ProximalTerm, RankPruning, RotationAlignment)
"""Every client rule, in the order they apply."""


def client_rules(options: Mapping) -> list[ClientRule]:
    """The rules ``options`` switch on (empty for plain LoRA training)."""
    return [rule for cls in RULE_TYPES if (rule := cls.from_options(options)) is not None]


def total_penalty(rules: Sequence[ClientRule], layers, modules: Sequence[str], initial: Adapter) -> torch.Tensor | None:
    """Sum of the rules' loss terms, ``None`` when no rule adds one."""
    terms = [t for r in rules if (t := r.penalty(layers, modules, initial)) is not None]
    return sum(terms[1:], terms[0]) if terms else None


def select_trainable(rules: Sequence[ClientRule], modules: frozenset[str], score: ModuleScorer) -> frozenset[str]:
    """The modules that train after every rule's :meth:`ClientRule.select`, in order."""
    for rule in rules:
        modules = rule.select(modules, score)
    if not modules:
        raise ValueError("the method's client rules left no module to train; check its options (e.g. fisher_layers >= 1)")
    return modules

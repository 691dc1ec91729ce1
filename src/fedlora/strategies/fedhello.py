"""Fed-HeLLo with Fisher-score layer allocation, FIM-HLA (Zhang, Liu, Xu, Hu, "Fed-HeLLo: Efficient
Federated Foundation Model Fine-Tuning with Heterogeneous LoRA Allocation", 2025; the authors of
Fed-pilot).

Each client can afford to train ``L_k`` of the ``L`` decoder layers' LoRA adapters
(``L_k = max(1, round(f_k · L))``, ``f_k`` its ``layer_fraction``, e.g. from its memory). Every
round, the client scores each layer by the empirical Fisher information of its LoRA parameters at
the round's starting adapter, ``F_l = Σ_{m ∈ l} (1/N) Σ_b ||∂ℓ_b/∂θ_m||²`` over ``N`` local batches
(the dynamic layer importance of FIM-HLA), and trains the ``L_k`` layers with the largest score
(:class:`fedlora.client.rules.FisherLayerSelection`); the other layers keep the global adapter,
applied frozen. The server averages each module over the clients that trained it, FedIT's
``A = Σ p_k A_k``, ``B = Σ p_k s_k B_k`` with ``p_k`` renormalised over those clients; a module
nobody trained keeps its value.

The paper's other allocations (geometric patterns GD-HLA and their randomised version RGD-HLA)
are not implemented; FedRA (``fedra``) is the random-layer baseline.

Heterogeneous ranks: no (FedIT's per-module average needs one rank). Heterogeneous capacity is the
point: ``fractions`` gives each client its share of layers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, Update
from fedlora.lora.linalg import rescale_alpha
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.fedit import fedavg_factors
from fedlora.strategies.fedra import layer_index

__all__ = ["FedHeLLo"]


class FedHeLLo:
    """Client-side Fisher-score choice of the layers to train, per-module FedAvg over their trainers.

    Args:
        seed: seed of the shared fresh init.
        layer_fraction: share of the decoder layers every client trains (``fractions`` overrides it).
        fractions: client id -> its share of layers in (0, 1].
        fisher_batches: local batches of the Fisher scoring pass.
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "fedhello"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, layer_fraction: float = 0.5, fractions: Mapping[str, float] | None = None,
                 fisher_batches: int = 2, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:  # fmt: skip
        bad = {k: v for k, v in {"layer_fraction": layer_fraction, **dict(fractions or {})}.items() if not 0 < float(v) <= 1}
        if bad or int(fisher_batches) < 1:
            raise ValueError(f"Fed-HeLLo: layer fractions must be in (0, 1] and fisher_batches >= 1; got {bad or fisher_batches}")
        self.seed, self.layer_fraction = int(seed), float(layer_fraction)
        self.fractions = {str(k): float(v) for k, v in (fractions or {}).items()}
        self.fisher_batches = int(fisher_batches)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._book = C.RoundBook()

    def layer_budget(self, plan: ClientPlan) -> int:
        """``L_k``: how many decoder layers client ``plan.client_id`` trains."""
        layers = {i for m in plan.ranks if (i := layer_index(m)) is not None}
        return max(1, round(self.fractions.get(plan.client_id, self.layer_fraction) * len(layers)))

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        C.homogeneous_ranks(plans, {m: f.rank for m, f in self._global.items()}, "Fed-HeLLo")
        plans_by_id = self._book.start(server_round, plans, "Fed-HeLLo")
        return {cid: Payload(p, init={m: rescale_alpha(self._global[m], p.alphas[m]) for m in p.ranks if m in self._global}, seed=self.seed,
                             options={"fisher_layers": self.layer_budget(p), "fisher_batches": self.fisher_batches})
                for cid, p in plans_by_id.items()}  # fmt: skip

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "Fed-HeLLo", shapes, exact_rank=True, subset=True)
        new = dict(self._global)
        groups = C.by_module(valid, self._book.plans)
        for module, group in groups.items():
            new[module] = fedavg_factors([f for _, f in group], C.example_weights(group))
        self._global = new
        self._shapes.update({m: shapes[m] for m in new})
        layers = {layer_index(m) for m in groups} - {None}
        return RoundResult([u.client_id for u in valid], rejected, C.round_metrics(valid, rejected) | {"layers_trained": float(len(layers))})

    def global_adapter(self) -> Adapter:
        """Global ``A``, ``B`` with ``alpha = r`` (scale 1): ``ΔW = B @ A``."""
        return dict(self._global)

    def state_dict(self) -> dict[str, Any]:
        return C.global_state(self) | {"layer_fraction": self.layer_fraction, "fractions": dict(self.fractions),
                                       "fisher_batches": self.fisher_batches}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.load_global_state(self, state)
        self.layer_fraction, self.fractions = float(state["layer_fraction"]), dict(state["fractions"])
        self.fisher_batches = int(state["fisher_batches"])

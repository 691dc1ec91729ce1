"""FedRA (Su et al., "FedRA: A Random Allocation Strategy for Federated Tuning to Unleash the Power of
Heterogeneous Clients", ECCV 2024).

Every round the server draws a random allocation of decoder layers to clients: client ``k`` gets
``L_k = max(1, round(f_k · L))`` of the ``L`` layers its plan adapts (``f_k``: its ``layer_fraction``),
drawn without replacement, seeded by ``(seed, round, client)``. The client trains LoRA on a
**sub-model made of those layers only** (the others are skipped in its forward pass:
``payload.options["submodel_layers"]``, :func:`fedlora.client.trainer.decoder_layer_subset`), which
is what lets a small device take part. The server averages each module's factors over the clients
that trained it this round (FedAvg per layer, :class:`fedlora.strategies.fedit.FedIT`); a module
nobody trained keeps its value. Evaluation and export use the full model.

Heterogeneous ranks: no (FedIT's per-module average needs one rank). Heterogeneous capacity is the
point: ``fractions`` gives each client its own share of layers (e.g. from its memory budget).
"""

from __future__ import annotations

import random
import re
from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, Update
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.fedit import FedIT

__all__ = ["FedRA", "layer_of", "layer_index"]

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_index(module: str) -> int | None:
    """Decoder layer index of a module path (``model.layers.7.mlp.up_proj`` -> 7), ``None`` outside the layers."""
    match = _LAYER.search(module)
    return None if match is None else int(match.group(1))


def layer_of(module: str) -> int:
    """Decoder layer index of a module path; a ValueError when it is not inside a decoder layer."""
    index = layer_index(module)
    if index is None:
        raise ValueError(f"FedRA: module {module!r} is not inside a decoder layer (no '.layers.<i>.' in its path)")
    return index


class FedRA:
    """Random per-round layer allocation, sub-model training, per-layer FedAvg.

    Args:
        seed: seed of the allocation and of the shared fresh init.
        layer_fraction: share of the layers every client trains (``fractions`` overrides it per client).
        fractions: client id -> its share of layers in (0, 1].
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "fedra"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, layer_fraction: float = 0.5, fractions: Mapping[str, float] | None = None,
                 shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:  # fmt: skip
        bad = {k: v for k, v in {"layer_fraction": layer_fraction, **dict(fractions or {})}.items() if not 0 < float(v) <= 1}
        if bad:
            raise ValueError(f"FedRA: layer fractions must be in (0, 1]; got {bad}")
        self.seed, self.layer_fraction, self.fractions = int(seed), float(layer_fraction), {str(k): float(v) for k, v in (fractions or {}).items()}
        self.inner = FedIT(seed=seed, shapes=shapes)
        self.allocation: dict[str, list[int]] = {}

    def allocate(self, server_round: int, plan: ClientPlan) -> list[int]:
        """The layers client ``plan.client_id`` trains in ``server_round``."""
        layers = sorted({layer_of(m) for m in plan.ranks})
        k = max(1, round(self.fractions.get(plan.client_id, self.layer_fraction) * len(layers)))
        rng = random.Random(C.derive_seed(self.seed, "fedra", server_round, plan.client_id))
        return sorted(rng.sample(layers, min(k, len(layers))))

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        sub_plans, self.allocation = [], {}
        for p in plans:
            chosen = self.allocate(server_round, p)
            keep = [m for m in p.ranks if layer_of(m) in chosen]
            sub_plans.append(ClientPlan(p.client_id, {m: p.ranks[m] for m in keep}, {m: p.alphas[m] for m in keep}))
            self.allocation[p.client_id] = chosen
        payloads = self.inner.configure(server_round, sub_plans)
        for cid, payload in payloads.items():
            payload.options = {**payload.options, "submodel_layers": list(self.allocation[cid])}
        return payloads

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        result = self.inner.aggregate(server_round, updates)
        covered = {i for cid in result.accepted for i in self.allocation.get(cid, [])}
        result.metrics["layers_trained"] = float(len(covered))
        return result

    def global_adapter(self) -> Adapter:
        return self.inner.global_adapter()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer_fraction": self.layer_fraction, "fractions": dict(self.fractions),
                "allocation": {c: list(v) for c, v in self.allocation.items()}, "inner": self.inner.state_dict()}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.layer_fraction, self.fractions = float(state["layer_fraction"]), dict(state["fractions"])
        self.allocation = {c: [int(i) for i in v] for c, v in state["allocation"].items()}
        self.inner.load_state_dict(state["inner"])

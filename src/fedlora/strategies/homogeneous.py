"""The round of a homogeneous-rank method whose only choice is how it merges one module's factors.

Every client trains the same rank per module (mixed ranks raise a ValueError naming the method). The
server sends each client the global factors at the client's alpha (a fresh shared init from ``seed``
in round 1), keeps the updates at exactly that rank, groups them by module and replaces each module's
global factors by ``merge(factors, weights)``, ``weights`` being the clients' example shares
``p_k = n_k / Σ_j n_j``. The global state keeps ``alpha = r`` (scale 1).

A method that differs from FedIT only in that rule subclasses :class:`HomogeneousAveraging`, names
itself (``name``, ``label``) and writes ``merge``; ``robust``/``trim`` are there for rules that offer
a robust variant (:mod:`fedlora.lora.robust`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.server_state import OnServerState, check_robust

__all__ = ["HomogeneousAveraging"]


class HomogeneousAveraging(OnServerState):
    """One rank per module, global factors sent at each client's alpha, ``merge`` per module (module docstring).

    Args:
        seed: seed of the shared fresh init (round 1: every client gets the same ``A``).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
        robust: ``mean``, or the robust ``median`` / ``trimmed_mean`` (fraction ``trim`` cut at each end).
    """

    name = ""
    label = ""
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None,
                 robust: str = "mean", trim: float = 0.1) -> None:  # fmt: skip
        check_robust(robust, trim, self.label)
        self.robust, self.trim = robust, float(trim)
        super().__init__(seed=seed, shapes=shapes)

    def merge(self, factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
        """One module's new global factors from the clients' ``factors`` (one rank) and example ``weights``."""
        raise NotImplementedError(f"{type(self).__name__} must define merge(factors, weights)")

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        C.homogeneous_ranks(plans, self.server.ranks(), self.label)
        return {cid: Payload(p, init=self.server.init_at_alpha(p), seed=self.seed) for cid, p in self.server.start(server_round, plans).items()}

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(server_round, updates, shapes, exact_rank=True)
        groups = self.server.groups(valid)
        self.server.commit({m: self.merge([f for _, f in g], C.example_weights(g)) for m, g in groups.items()}, shapes)
        return self.server.result(valid, rejected)


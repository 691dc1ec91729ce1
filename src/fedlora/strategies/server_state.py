"""The server-side bookkeeping most methods share, as one named piece a method holds (composition, no
inheritance between methods): the global adapter, the module shapes known so far, the round's plans, the
method's seed, and their checkpoint state.

A method that differs from FedIT only in its aggregation rule reads as::

    self.server = ServerState("FedIT", seed, shapes)
    def configure(self, r, plans):  ->  {cid: Payload(p, init=self.server.init_at_alpha(p), ...) for cid, p in self.server.start(r, plans).items()}
    def aggregate(self, r, updates):
        shapes = self.server.round_shapes(updates)
        valid, rejected = self.server.validate(r, updates, shapes, exact_rank=True)
        self.server.commit({m: rule(group) for m, group in self.server.groups(valid).items()}, shapes)
        return self.server.result(valid, rejected)

The checkpoint state is exactly the one of :func:`fedlora.strategies._common.global_state`
(``name``, ``seed``, ``global``, ``shapes``, ``book``), so runs resume across the change.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import rescale_alpha
from fedlora.lora.robust import ROBUST_RULES
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import RoundResult

__all__ = ["ServerState", "OnServerState", "check_robust", "server_seed"]


def check_robust(robust: str, trim: float, method: str) -> None:
    """A method's ``robust`` rule and ``trim`` fraction, or a ValueError naming both."""
    if robust not in ROBUST_RULES or not 0 <= trim < 0.5:
        raise ValueError(f"{method}: robust must be one of {', '.join(ROBUST_RULES)} and 0 <= trim < 0.5; got {robust!r}, {trim}")


server_seed = property(lambda self: self.server.seed, doc="The method's seed (its ``server`` state's), for wrappers such as FedProx.")
"""A method that holds a :class:`ServerState` as ``self.server`` declares ``seed = server_seed``."""


class ServerState:
    """Global adapter, known shapes, the round's plans and the seed of one method (module docstring).

    Args:
        label: the method's name in messages (``"FedIT"``, ``"FFA-LoRA"``, ...).
        seed: seed of the shared fresh init. shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec).
    """

    def __init__(self, label: str, seed: int, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None) -> None:
        self.label, self.seed = label, int(seed)
        self.shapes: C.Shapes = C.normalize_shapes(shapes)
        self.adapter: Adapter = {}
        self.book = C.RoundBook()

    def ranks(self) -> dict[str, int]:
        """The global rank of every module trained so far."""
        return {m: f.rank for m, f in self.adapter.items()}

    def start(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, ClientPlan]:
        """Open the round: the plans by client id (kept to check the replies)."""
        return self.book.start(server_round, plans, self.label)

    def init_at_alpha(self, plan: ClientPlan) -> Adapter:
        """The global factors of the plan's modules, expressed at the plan's alphas (fresh modules left out)."""
        return {m: rescale_alpha(self.adapter[m], plan.alphas[m]) for m in plan.ranks if m in self.adapter}

    def leading_heads(self, plan: ClientPlan) -> Adapter:
        """Each module's leading ``r_k`` components at the plan's alpha (:func:`fedlora.strategies._common.leading_heads`)."""
        return C.leading_heads(self.adapter, plan, self.seed)

    def round_shapes(self, updates: Sequence[Update]) -> C.Shapes:
        return C.round_shapes(self.shapes, updates)

    def validate(self, server_round: int, updates: Sequence[Update], shapes: Mapping[str, tuple[int, int]],
                 **checks: Any) -> tuple[list[Update], dict[str, str]]:  # fmt: skip
        """The replies that pass :func:`fedlora.strategies._common.validate_round`, and the rejected ones with why."""
        return C.validate_round(self.book, server_round, updates, self.label, shapes, **checks)

    def groups(self, valid: Sequence[Update]) -> dict[str, list[tuple[Update, LoraFactors]]]:
        """Module -> the ``(update, factors)`` that trained it this round."""
        return C.by_module(valid, self.book.plans)

    def commit(self, new: Mapping[str, LoraFactors], shapes: Mapping[str, tuple[int, int]]) -> None:
        """Replace the global factors of the modules in ``new`` (the others keep theirs) and remember their shapes."""
        self.adapter = {**self.adapter, **new}
        self.shapes.update({m: shapes[m] for m in self.adapter})

    @staticmethod
    def result(valid: Sequence[Update], rejected: Mapping[str, str], extra: Mapping[str, float] | None = None) -> RoundResult:
        return RoundResult([u.client_id for u in valid], dict(rejected), C.round_metrics(valid, rejected) | dict(extra or {}))

    def to_state(self, name: str) -> dict[str, Any]:
        """The checkpoint state (the format of :func:`fedlora.strategies._common.global_state`)."""
        return {"name": name, "seed": self.seed, "global": C.adapter_to_state(self.adapter), "shapes": C.shapes_to_state(self.shapes),
                "book": self.book.to_state()}  # fmt: skip

    def load(self, state: Mapping[str, Any], name: str) -> None:
        """Inverse of :meth:`to_state`, checking that the state belongs to method ``name``."""
        C.check_state_name(state, name)
        self.seed = int(state["seed"])
        self.adapter = C.adapter_from_state(state["global"])
        self.shapes = C.normalize_shapes(state["shapes"])
        self.book = C.RoundBook.from_state(state["book"])


class OnServerState:
    """What every method that keeps a :class:`ServerState` as ``self.server`` shares: its ``seed``, its global
    adapter (the server's factors, ``alpha = r``: ``ΔW = B @ A``) and the state round-trip under its ``name``.
    A method with more state extends ``__init__`` / ``state_dict`` / ``load_state_dict``; one whose global
    differs overrides ``global_adapter``.

    Args:
        seed: seed of the shared fresh init (round 1's factors, the same for every client).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = ""
    label = ""  # the method's name in messages
    server: ServerState
    seed = server_seed

    def __init__(self, *, seed: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        self.server = ServerState(self.label, seed, shapes)

    def global_adapter(self) -> Adapter:
        return dict(self.server.adapter)

    def state_dict(self) -> dict[str, Any]:
        return self.server.to_state(self.name)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load(state, self.name)

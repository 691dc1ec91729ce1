"""Helpers shared by the strategies by composition (no base class): plan bookkeeping, round
validation, weights, and plain-tensor state conversion. Torch only.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.validation import InvalidUpdateError, validate_update
from fedlora.modelspec import ModelSpec

STATE_DTYPE = torch.float32
"""Dtype of every strategy's stored global state; math runs in float64 and is cast to this."""

Shapes = dict[str, tuple[int, int]]


@dataclass
class RoundBook:
    """The plans sent in the current round, so that ``aggregate`` validates against them."""

    round: int | None = None
    plans: dict[str, ClientPlan] = field(default_factory=dict)

    def start(self, server_round: int, plans: Sequence[ClientPlan], method: str) -> dict[str, ClientPlan]:
        """Remember ``plans`` for ``server_round``; duplicate client ids are an error."""
        counts = Counter(p.client_id for p in plans)
        dupes = sorted(c for c, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"{method}.configure: client ids {dupes[:3]} appear more than once in round {server_round}; give each client one plan")
        self.round = int(server_round)
        self.plans = {p.client_id: p for p in plans}
        return self.plans

    def check_round(self, server_round: int, method: str) -> None:
        if self.round is None:
            raise ValueError(f"{method}.aggregate(round {server_round}) before any configure; call configure(round, plans) first")
        if int(server_round) != self.round:
            raise ValueError(f"{method}.aggregate: round {server_round} but the last configure was for round {self.round}; configure each round before aggregating it")

    def to_state(self) -> dict[str, Any]:
        return {"round": self.round, "plans": [p.to_dict() for p in self.plans.values()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "RoundBook":
        plans = [ClientPlan.from_dict(d) for d in state["plans"]]
        return cls(state["round"], {p.client_id: p for p in plans})


def normalize_shapes(shapes: ModelSpec | Mapping[str, tuple[int, int]] | None) -> Shapes:
    """Module -> ``(d_out, d_in)`` from a :class:`ModelSpec`, a mapping, or nothing."""
    if shapes is None:
        return {}
    if isinstance(shapes, ModelSpec):
        return {m.name: (m.d_out, m.d_in) for m in shapes.modules}
    return {str(k): (int(v[0]), int(v[1])) for k, v in shapes.items()}


def round_shapes(known: Mapping[str, tuple[int, int]], updates: Sequence[Update]) -> Shapes:
    """Known shapes, plus for other modules the most common ``(d_out, d_in)`` among the updates.

    Ties go to the smallest shape, so the result does not depend on the order of the updates.
    Pass ``shapes=`` (e.g. a ModelSpec) to a strategy to check shapes from round 1 on.
    """
    votes: dict[str, Counter] = {}
    for u in updates:
        for m, f in u.factors.items():
            if (m not in known and isinstance(f, LoraFactors) and isinstance(f.A, torch.Tensor) and isinstance(f.B, torch.Tensor)
                    and f.A.dim() == 2 and f.B.dim() == 2):  # fmt: skip
                votes.setdefault(m, Counter())[(int(f.B.shape[0]), int(f.A.shape[1]))] += 1
    out = dict(known)
    for m, counter in votes.items():
        out[m] = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return out


def validate_round(
    book: RoundBook,
    server_round: int,
    updates: Sequence[Update],
    method: str,
    shapes: Mapping[str, tuple[int, int]],
    per_client: Mapping[str, Mapping[str, Any]] | None = None,
    **checks: Any,
) -> tuple[list[Update], dict[str, str]]:
    """Split ``updates`` into valid ones (sorted by client id) and rejected ``{client_id: reason}``.

    Rejects unknown clients, duplicate client ids and anything :func:`validate_update` refuses
    (``checks`` are passed to it, e.g. ``exact_rank=True``, ``train_A=False``, ``expected_A=``;
    ``per_client[client_id]`` adds checks for one client, e.g. the frozen ``B`` it was sent).
    """
    book.check_round(server_round, method)
    counts = Counter(u.client_id for u in updates)
    valid, rejected = [], {}
    for u in updates:
        if counts[u.client_id] > 1:
            rejected[u.client_id] = str(InvalidUpdateError(u.client_id, None, f"{counts[u.client_id]} updates this round", "send one update per round"))
        elif u.client_id not in book.plans:
            rejected[u.client_id] = str(
                InvalidUpdateError(u.client_id, None, f"client was not configured in round {book.round}", "only clients sent a payload this round may answer")
            )
        else:
            try:
                validate_update(u, book.plans[u.client_id], expected_shapes=shapes, **checks, **(per_client or {}).get(u.client_id, {}))
                valid.append(u)
            except InvalidUpdateError as err:
                rejected[u.client_id] = str(err)
    return sorted(valid, key=lambda u: u.client_id), rejected


def by_module(updates: Sequence[Update], plans: Mapping[str, ClientPlan]) -> dict[str, list[tuple[Update, LoraFactors]]]:
    """Module -> ``[(update, factors)]`` over the updates that trained it, modules sorted.

    A module a client applied frozen (in its plan's ranks but not trainable) is not aggregated.
    """
    groups: dict[str, list[tuple[Update, LoraFactors]]] = {}
    for u in updates:
        trainable = plans[u.client_id].trainable_modules
        for m, f in u.factors.items():
            if m in trainable:
                groups.setdefault(m, []).append((u, f))
    return dict(sorted(groups.items()))


def example_weights(group: Sequence[tuple[Update, LoraFactors]]) -> list[float]:
    """``p_k = n_k / Σ n_j`` over the clients of one module."""
    total = float(sum(u.num_examples for u, _ in group))
    return [u.num_examples / total for u, _ in group]


def homogeneous_ranks(plans: Sequence[ClientPlan], known: Mapping[str, int], method: str) -> dict[str, int]:
    """Module -> the single rank every plan (and the existing global state) uses; else ValueError."""
    ranks: dict[str, set[int]] = {m: {int(r)} for m, r in known.items()}
    seen: dict[str, set[int]] = {}
    for p in plans:
        for m, r in p.ranks.items():
            seen.setdefault(m, set()).add(int(r))
            ranks.setdefault(m, set()).add(int(r))
    mixed = {m: sorted(rs) for m, rs in ranks.items() if len(rs) > 1 and m in seen}
    if mixed:
        m, rs = next(iter(sorted(mixed.items())))
        raise ValueError(
            f"{method} needs one LoRA rank per module across clients and rounds; module {m!r} has ranks {rs} "
            f"({len(mixed)} modules mixed). Give every client the minimum rank ({min(rs)}) or use a heterogeneous-rank "
            f"method such as 'flexlora' or 'hetlora'"
        )
    return {m: next(iter(rs)) for m, rs in ranks.items()}


def max_ranks(plans: Iterable[ClientPlan]) -> dict[str, int]:
    """Module -> the largest rank any of ``plans`` gives it."""
    out: dict[str, int] = {}
    for p in plans:
        for m, r in p.ranks.items():
            out[m] = max(out.get(m, 0), int(r))
    return out


def leading_heads(global_adapter: Adapter, plan: ClientPlan, seed: int) -> Adapter:
    """Each planned module's first ``r_k`` global components at the plan's alpha (modules never aggregated: none)."""
    from fedlora.lora.compose import client_head

    return {m: client_head(global_adapter[m], int(r), plan.alphas[m], seed, m) for m, r in plan.ranks.items() if m in global_adapter}


def round_starts(global_adapter: Adapter, plans: Iterable[ClientPlan], shapes: Mapping[str, tuple[int, int]], seed: int) -> Adapter:
    """Per module, the global factors grown to the round's largest rank (fresh-init rows), or the fresh init (scale 1)."""
    from fedlora.lora.linalg import extend_rank, init_lora_factors

    out = {}
    for m, r in max_ranks(plans).items():
        if m in global_adapter:
            out[m] = extend_rank(global_adapter[m], max(r, global_adapter[m].rank), seed, m)
        elif m in shapes:
            out[m] = init_lora_factors(*shapes[m], r, float(r), seed, m)
    return out


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from ``seed`` and more parts (e.g. the round), via hashlib."""
    text = "\x00".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def adapter_to_state(adapter: Mapping[str, LoraFactors]) -> dict[str, dict[str, Any]]:
    """Plain ``{module: {"A": tensor, "B": tensor, "alpha": float}}`` for ``torch.save``."""
    return {m: {"A": f.A, "B": f.B, "alpha": float(f.alpha)} for m, f in adapter.items()}


def adapter_from_state(state: Mapping[str, Mapping[str, Any]]) -> Adapter:
    return {m: LoraFactors(d["A"].clone(), d["B"].clone(), float(d["alpha"])) for m, d in state.items()}


def shapes_to_state(shapes: Mapping[str, tuple[int, int]]) -> dict[str, list[int]]:
    return {m: [int(s[0]), int(s[1])] for m, s in shapes.items()}


def check_state_name(state: Mapping[str, Any], name: str) -> None:
    if state.get("name") != name:
        raise ValueError(f"state_dict of strategy {state.get('name')!r} cannot be loaded into {name!r}; build the strategy the run used")


def round_metrics(valid: Sequence[Update], rejected: Mapping[str, str]) -> dict[str, float]:
    return {"num_accepted": float(len(valid)), "num_rejected": float(len(rejected))}


def global_state(strategy: Any) -> dict[str, Any]:
    """State of a strategy whose whole state is ``seed``, ``_global``, ``_shapes`` and ``_book``."""
    return {
        "name": strategy.name,
        "seed": strategy.seed,
        "global": adapter_to_state(strategy._global),
        "shapes": shapes_to_state(strategy._shapes),
        "book": strategy._book.to_state(),
    }


def load_global_state(strategy: Any, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`global_state`, checking that the state belongs to this method."""
    check_state_name(state, strategy.name)
    strategy.seed = int(state["seed"])
    strategy._global = adapter_from_state(state["global"])
    strategy._shapes = normalize_shapes(state["shapes"])
    strategy._book = RoundBook.from_state(state["book"])

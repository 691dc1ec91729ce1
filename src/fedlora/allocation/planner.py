"""Client plans: FlexLoRA (every module at the client's rank) and Fed-pilot (modules chosen under a
memory budget). Torch only.

Fed-pilot plans carry an adapter on *every* candidate module (``plan.ranks``), and mark the selected
ones ``trainable``: the global values of the other modules are applied frozen, so each client trains
its modules in the context of the current global model (as in FedRA-style partial training). The
memory model charges the frozen adapters' parameters (``frozen=``). ``frozen_adapters=False`` gives
plans that carry only the selected modules.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.allocation.knapsack import BudgetTooSmallError, PrecisionSelection, Selection, select_modules, select_precision_and_modules
from fedlora.allocation.memory import MemoryModel
from fedlora.allocation.plan import ClientPlan
from fedlora.modelspec import ModelSpec

__all__ = ["target_modules", "plan_flexlora", "fedpilot_selections", "fedpilot_precision_selections", "plans_from_selections", "plan_fedpilot"]


def target_modules(spec: ModelSpec, target_kinds: Sequence[str] | None = None) -> list[str]:
    """Module names of ``spec`` whose kind is in ``target_kinds`` (all modules when None)."""
    if target_kinds is None:
        return list(spec.module_names)
    kinds = set(target_kinds)
    unknown = sorted(kinds - {m.kind for m in spec.modules})
    if unknown:
        raise ValueError(f"target_kinds {unknown} are not in the model spec; its kinds are {sorted({m.kind for m in spec.modules})}")
    return [m.name for m in spec.modules if m.kind in kinds]


def _check_alpha_ratio(alpha_ratio: float) -> float:
    if not alpha_ratio > 0:
        raise ValueError(f"alpha_ratio must be > 0 (alpha = alpha_ratio * rank), got {alpha_ratio!r}")
    return float(alpha_ratio)


def plan_flexlora(
    spec: ModelSpec, client_ids: Sequence[str], ranks: Sequence[int], *, alpha_ratio: float = 2.0,
    target_kinds: Sequence[str] | None = None,
) -> list[ClientPlan]:  # fmt: skip
    """One plan per client: every targeted module at the client's rank, ``alpha = alpha_ratio·rank``.

    A rank above a module's ``min(d_in, d_out)`` adds nothing and is clamped for that module.
    Pair with ``profiles.sample_ranks`` for FlexLoRA's heterogeneous resource distributions.
    """
    if len(client_ids) != len(ranks):
        raise ValueError(f"plan_flexlora: {len(client_ids)} client ids but {len(ranks)} ranks; give one rank per client")
    ratio = _check_alpha_ratio(alpha_ratio)
    names = target_modules(spec, target_kinds)
    plans = []
    for cid, rank in zip(client_ids, ranks):
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise ValueError(f"plan_flexlora: rank of client {cid!r} must be a positive int, got {rank!r}")
        per_module = {m: min(int(rank), spec.module(m).d_in, spec.module(m).d_out) for m in names}
        plans.append(ClientPlan(str(cid), per_module, {m: ratio * r for m, r in per_module.items()}))
    return plans


def _per_client(value: Any, n: int, what: str, is_single) -> list:
    if is_single(value):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"plan_fedpilot: {what} has {len(value)} entries for {n} clients; give one per client or a single one")
    return list(value)


def fedpilot_selections(
    spec: ModelSpec, client_ids: Sequence[str], budgets_bytes: Sequence[int],
    values: Mapping[str, float] | Sequence[Mapping[str, float]], memory_model_kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *, rank: int = 8, rank_options: Sequence[int] | None = None, frozen_adapters: bool = True,
    target_kinds: Sequence[str] | None = None,
) -> list[Selection]:  # fmt: skip
    """Knapsack selection per client (``knapsack.select_modules``) under its budget.

    Args:
        values: module -> value for all clients, or one mapping per client (e.g. local importance
            mixed with the server's global score). Modules missing from a mapping get value 0.
        memory_model_kwargs: ``MemoryModel`` keywords (batch_size, seq_len, ...), shared or per client.
        rank: rank of every adapter; ``rank_options`` lets the solver pick a rank per module instead.

    Raises:
        BudgetTooSmallError: naming the client, the memory it needs and its budget.
    """
    n = len(client_ids)
    if len(budgets_bytes) != n:
        raise ValueError(f"plan_fedpilot: {n} client ids but {len(budgets_bytes)} budgets; give one budget per client")
    per_values = _per_client(values, n, "values", lambda v: isinstance(v, Mapping))
    per_kwargs = _per_client(memory_model_kwargs, n, "memory_model_kwargs", lambda v: isinstance(v, Mapping))
    names = target_modules(spec, target_kinds)
    options = tuple(rank_options) if rank_options is not None else (int(rank),)
    frozen = {m: int(rank) for m in names} if frozen_adapters else None
    selections = []
    for cid, budget, vals, kwargs in zip(client_ids, budgets_bytes, per_values, per_kwargs):
        mm = MemoryModel(spec, **dict(kwargs))
        candidate_values = {m: float(vals.get(m, 0.0)) for m in names}
        try:
            selections.append(select_modules(candidate_values, mm, int(budget), options, frozen=frozen))
        except BudgetTooSmallError as err:
            raise BudgetTooSmallError(err.needed_bytes, err.budget_bytes, err.detail, client_id=str(cid)) from None
    return selections


def fedpilot_precision_selections(
    spec: ModelSpec, client_ids: Sequence[str], budgets_bytes: Sequence[int],
    values: Mapping[str, float] | Sequence[Mapping[str, float]], memory_model_kwargs: Mapping[str, Any],
    precisions: Sequence[str], *, precision_weights: Mapping[str, float] | None = None, rank: int = 8,
    frozen_adapters: bool = True, target_kinds: Sequence[str] | None = None,
) -> list[PrecisionSelection]:  # fmt: skip
    """Per client, the base precision among ``precisions`` and the modules, chosen jointly under its budget
    (``knapsack.select_precision_and_modules``; ``memory_model_kwargs`` without ``quantization``, shared).

    Raises:
        BudgetTooSmallError: naming the client, when nothing fits at any precision.
    """
    n = len(client_ids)
    if len(budgets_bytes) != n:
        raise ValueError(f"plan_fedpilot: {n} client ids but {len(budgets_bytes)} budgets; give one budget per client")
    per_values = _per_client(values, n, "values", lambda v: isinstance(v, Mapping))
    names = target_modules(spec, target_kinds)
    frozen = {m: int(rank) for m in names} if frozen_adapters else None
    models = {q: MemoryModel(spec, **{**dict(memory_model_kwargs), "quantization": q}) for q in precisions}
    out = []
    for cid, budget, vals in zip(client_ids, budgets_bytes, per_values):
        candidate_values = {m: float(vals.get(m, 0.0)) for m in names}
        try:
            out.append(select_precision_and_modules(candidate_values, models, int(budget), (int(rank),), frozen=frozen,
                                                    precision_weights=precision_weights))  # fmt: skip
        except BudgetTooSmallError as err:
            raise BudgetTooSmallError(err.needed_bytes, err.budget_bytes, err.detail, client_id=str(cid)) from None
    return out


def plans_from_selections(
    spec: ModelSpec, client_ids: Sequence[str], selections: Sequence[Selection], *, rank: int = 8,
    alpha_ratio: float = 2.0, frozen_adapters: bool = True, target_kinds: Sequence[str] | None = None,
) -> list[ClientPlan]:  # fmt: skip
    """Plans whose ``trainable`` modules are the selections; with ``frozen_adapters`` every other
    targeted module carries a frozen adapter at ``rank`` (the global value, applied but not trained)."""
    ratio = _check_alpha_ratio(alpha_ratio)
    names = target_modules(spec, target_kinds)
    plans = []
    for cid, sel in zip(client_ids, selections):
        ranks = {m: int(rank) for m in names} if frozen_adapters else {}
        ranks.update(sel.modules)
        plans.append(ClientPlan(str(cid), ranks, {m: ratio * r for m, r in ranks.items()}, frozenset(sel.modules)))
    return plans


def plan_fedpilot(
    spec: ModelSpec, client_ids: Sequence[str], budgets_bytes: Sequence[int],
    values: Mapping[str, float] | Sequence[Mapping[str, float]], memory_model_kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *, rank: int = 8, alpha_ratio: float = 2.0, rank_options: Sequence[int] | None = None,
    frozen_adapters: bool = True, target_kinds: Sequence[str] | None = None,
) -> list[ClientPlan]:  # fmt: skip
    """Fed-pilot plans: per client, the most valuable modules whose predicted peak fits its budget.

    Example::

        plans = plan_fedpilot(spec, ["c0", "c1"], [parse_bytes("1GiB"), parse_bytes("2GiB")],
                              importance, {"batch_size": 4, "seq_len": 128}, rank=8)

    ``plan.trainable`` is the selection; see the module docstring for ``plan.ranks``.
    """
    selections = fedpilot_selections(
        spec, client_ids, budgets_bytes, values, memory_model_kwargs, rank=rank, rank_options=rank_options,
        frozen_adapters=frozen_adapters, target_kinds=target_kinds,
    )  # fmt: skip
    return plans_from_selections(spec, client_ids, selections, rank=rank, alpha_ratio=alpha_ratio, frozen_adapters=frozen_adapters, target_kinds=target_kinds)

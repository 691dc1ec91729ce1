"""Exact module selection under a memory budget (Fed-pilot's solver, fedlora's version). Torch only.

Problem: choose LoRA modules (and, optionally, a rank per module) maximising the summed value
subject to ``MemoryModel.peak_bytes(selection) <= budget``. The cost is not additive (training a
module keeps every activation above it), but it is additive *once the first trained group is
fixed* (``memory.py``)::

    peak = fixed + downstream(j*) + first(j*, S_j*) + Σ_{j > j*} later(j, S_j)

so the solver enumerates the first trained group ``j*`` and, for the groups after it, solves a
multiple-choice knapsack (one option per group: which of its modules train, at which ranks) by
dynamic programming over the remaining memory. One pass over the groups in reverse execution
order serves every ``j*``: before group ``j`` is added, the table holds the best value of the
groups after ``j`` for every capacity, which is exactly what ``j`` as first group needs.

Discretisation and exactness: costs of the later groups are rounded *up* to units of ``u`` bytes
and the capacity *down*, so a returned selection never exceeds the budget
(``Σ cost <= Σ ceil(cost/u)·u <= floor(rem/u)·u <= rem``); the first group's cost is exact.
The DP is exactly optimal for the rounded costs; against the true costs it can only miss a
selection whose later groups come within ``k·u`` bytes of the budget (``k`` = number of later
groups selected). ``unit_bytes=1`` makes it exact for the true (integer) costs; the default
``u = ceil(capacity / resolution)`` keeps the table at ``resolution`` cells. Time
``O(G · O · K)`` for ``G`` groups, ``O`` options per group and ``K`` cells, vectorised per group.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from fedlora.allocation.memory import MemoryModel, format_bytes

__all__ = ["BudgetTooSmallError", "Selection", "PrecisionSelection", "select_modules", "select_precision_and_modules"]

_MAX_OPTIONS = 4096


class BudgetTooSmallError(ValueError):
    """The budget cannot train even the cheapest single module.

    Attributes:
        needed_bytes: least memory that trains one module. budget_bytes: the budget given.
        detail: what the needed memory is made of. client_id: the client, when known.
    """

    def __init__(self, needed_bytes: int, budget_bytes: int, detail: str, client_id: str | None = None) -> None:
        self.needed_bytes, self.budget_bytes, self.detail, self.client_id = int(needed_bytes), int(budget_bytes), detail, client_id
        who = f"client {client_id!r}: " if client_id is not None else ""
        super().__init__(
            f"{who}memory budget {format_bytes(budget_bytes)} ({budget_bytes} bytes) is below the {format_bytes(needed_bytes)} "
            f"({needed_bytes} bytes) needed to train any LoRA module: {detail}. Raise the budget to at least "
            f"{needed_bytes} bytes, or lower batch_size/seq_len, or enable grad_checkpointing"
        )


@dataclass(frozen=True)
class Selection:
    """What a client trains: ``modules`` {module: rank}, their summed ``value``, the memory model's
    ``predicted_bytes`` (<= ``budget_bytes``) and the ``shallowest_layer`` trained."""

    modules: dict[str, int]
    value: float
    predicted_bytes: int
    budget_bytes: int
    shallowest_layer: int


@dataclass
class _Group:
    """Candidates of one memory-model group: per module its rank options, values and exact costs
    as a later group; ``first`` lists every nonempty option with its exact first-group cost."""

    index: int
    modules: list[str]
    ranks: list[list[int]]
    values: list[list[float]]
    costs: list[list[int]]
    shared_later: int
    first: list[tuple[dict[str, int], float, int]]


def _value_of(values: Mapping, module: str, rank: int) -> float:
    v = values[module]
    if isinstance(v, Mapping):
        if rank not in v:
            raise ValueError(f"select_modules: values[{module!r}] has no value for rank {rank}; it has ranks {sorted(v)}")
        v = v[rank]
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"select_modules: value of {module!r} at rank {rank} must be finite and >= 0, got {v}")
    return v


def _ranks_for(module: str, values: Mapping, rank_options) -> list[int]:
    if isinstance(rank_options, Mapping):
        ranks = rank_options.get(module, sorted(values[module]) if isinstance(values[module], Mapping) else ())
    else:
        ranks = rank_options
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"select_modules: rank options of {module!r} must be positive ints, got {list(ranks)}")
    return ranks


def _build_groups(mm: MemoryModel, values: Mapping, rank_options, frozen: Mapping[str, int]) -> list[_Group]:
    out = []
    for j, group in enumerate(mm.groups):
        mods = [m for m in group.modules if m in values]
        if not mods:
            continue
        ranks = [_ranks_for(m, values, rank_options) for m in mods]
        if math.prod(len(r) + 1 for r in ranks) > _MAX_OPTIONS:
            raise ValueError(f"select_modules: group {group.kind} of layer {group.layer} has more than {_MAX_OPTIONS} options; offer fewer rank options")
        vals = [[_value_of(values, m, r) for r in rs] for m, rs in zip(mods, ranks)]
        costs = [[mm.module_bytes(m, r, frozen_rank=frozen.get(m)) for r in rs] for m, rs in zip(mods, ranks)]
        if min(min(c) for c in costs) < 0:
            raise ValueError(f"select_modules: a rank option below a module's frozen rank makes a negative cost in layer {group.layer}; offer ranks >= the frozen ones")
        first = []
        for combo in itertools.product(*[range(len(r) + 1) for r in ranks]):
            choice = {m: rs[i - 1] for m, rs, i in zip(mods, ranks, combo) if i > 0}
            if choice:
                value = sum(vals[k][i - 1] for k, i in enumerate(combo) if i > 0)
                cost = mm.shared_bytes(j, choice, first=True) + sum(costs[k][i - 1] for k, i in enumerate(combo) if i > 0)
                first.append((choice, value, cost))
        shared = mm.shared_bytes(j, {mods[0]: ranks[0][0]}, first=False)
        out.append(_Group(j, mods, ranks, vals, costs, shared, first))
    return out


def _too_small(mm: MemoryModel, groups: list[_Group], base: int, budget: int) -> BudgetTooSmallError:
    needed, what = min(
        (base + mm.downstream_bytes(g.index) + cost, ", ".join(f"{m} at rank {r}" for m, r in choice.items()))
        for g in groups
        for choice, _, cost in g.first
    )
    weights = mm.spec.num_parameters * mm.spec.param_bytes
    detail = (
        f"base weights {format_bytes(weights)} + loss buffers {format_bytes(mm.head_bytes())} + the cheapest module "
        f"({what}) with its activations at batch {mm.batch_size} x seq {mm.seq_len}"
    )
    return BudgetTooSmallError(needed, budget, detail)


def select_modules(
    values: Mapping[str, float] | Mapping[str, Mapping[int, float]],
    memory_model: MemoryModel,
    budget_bytes: int,
    rank_options: Sequence[int] | Mapping[str, Sequence[int]] = (8,),
    *,
    frozen: Mapping[str, int] | None = None,
    unit_bytes: int | None = None,
    resolution: int = 1 << 13,
) -> Selection:
    """Most valuable set of modules (and ranks) whose predicted peak fits ``budget_bytes``.

    Args:
        values: module -> value (any rank), or module -> {rank: value}. Only these modules are candidates.
        memory_model: the client's cost model (batch, sequence, dtype, optimizer, checkpointing).
        budget_bytes: the client's memory budget.
        rank_options: ranks a module may take (all modules, or per module).
        frozen: adapters present but not trained ({module: rank}); their parameters are paid always.
        unit_bytes: DP granularity; ``None`` picks ``ceil(capacity / resolution)``; 1 is exact.
        resolution: number of DP cells when ``unit_bytes`` is None.

    Raises:
        BudgetTooSmallError: not even the cheapest single module fits.
    """
    frozen = dict(frozen or {})
    groups = _build_groups(memory_model, values, rank_options, frozen)
    if not groups:
        raise ValueError("select_modules: no candidate module; values must name modules of the memory model's spec")
    base = memory_model.fixed_bytes(frozen)
    down = {g.index: memory_model.downstream_bytes(g.index) for g in groups}
    spare = budget_bytes - base - min(down[g.index] + min(c for _, _, c in g.first) for g in groups)
    if spare < 0:
        raise _too_small(memory_model, groups, base, budget_bytes)
    later_max = [g.shared_later + sum(max(c) for c in g.costs) for g in groups]
    u = int(unit_bytes) if unit_bytes else max(1, math.ceil(max(min(spare, sum(later_max)), 1) / resolution))
    most = sum(_units(g.shared_later, u) + sum(max(_units(c, u) for c in cs) for cs in g.costs) for g in groups)
    K = min(spare // u, most) + 1  # a capacity beyond `most` cells fits everything
    dp = torch.zeros(K, dtype=torch.float64)
    trace: dict[int, tuple] = {}
    best = (-1.0, -1, None, 0)  # value, position in `groups`, choice, cell
    for gi in range(len(groups) - 1, -1, -1):  # dp holds the best value of the groups after gi
        g = groups[gi]
        for choice, value, cost in g.first:
            rem = budget_bytes - base - down[g.index] - cost
            if rem >= 0:
                cell = min(rem // u, K - 1)
                total = value + float(dp[cell])
                if total > best[0] + 1e-12:
                    best = (total, gi, choice, cell)
        dp, trace[gi] = _add_group(dp, g, u)
    if best[1] < 0:
        raise _too_small(memory_model, groups, base, budget_bytes)
    return _reconstruct(best, groups, trace, u, memory_model, values, budget_bytes, frozen)


@dataclass(frozen=True)
class PrecisionSelection:
    """A client's base precision (``quantization``: ``"none"``, ``"int8"``, ``"nf4"``) and the modules it trains at
    that precision; ``weighted_value`` is the selection's value times the precision's weight."""

    quantization: str
    selection: Selection
    weighted_value: float


def select_precision_and_modules(
    values: Mapping[str, float] | Mapping[str, Mapping[int, float]],
    memory_models: Mapping[str, MemoryModel],
    budget_bytes: int,
    rank_options: Sequence[int] | Mapping[str, Sequence[int]] = (8,),
    *,
    precision_weights: Mapping[str, float] | None = None,
    frozen: Mapping[str, int] | None = None,
    unit_bytes: int | None = None,
    resolution: int = 1 << 13,
) -> PrecisionSelection:
    """The base precision and the modules, chosen jointly under one budget by the same value model.

    ``max_p w_p · max_S {value(S) : peak_p(S) <= budget}`` over the precisions ``p`` of ``memory_models``
    (one ``MemoryModel`` per precision, same spec and step; ``quantization`` sets its base bytes): the
    inner maximum is :func:`select_modules`, so the joint choice is exact whenever it is (``unit_bytes=1``).
    ``w_p`` (``precision_weights``, default 1 for every precision) discounts the value of training over a
    quantized base; a tie goes to the precision listed first (list the most precise first). A precision
    at which nothing fits is skipped; the error is raised only when nothing fits at any.

    Example: a client that fits every module over an NF4 base but half of them in bf16 trains every
    module in NF4 unless ``w_nf4 · value(all) < value(best half)``.
    """
    if not memory_models:
        raise ValueError("select_precision_and_modules: memory_models is empty; give one MemoryModel per precision")
    weights = dict(precision_weights or {})
    unknown = sorted(set(weights) - set(memory_models))
    if unknown:
        raise ValueError(f"select_precision_and_modules: precision_weights names {unknown}, not among {sorted(memory_models)}")
    best: PrecisionSelection | None = None
    smallest: BudgetTooSmallError | None = None
    for precision, mm in memory_models.items():
        try:
            sel = select_modules(values, mm, budget_bytes, rank_options, frozen=frozen, unit_bytes=unit_bytes, resolution=resolution)
        except BudgetTooSmallError as err:
            smallest = err if smallest is None or err.needed_bytes < smallest.needed_bytes else smallest
            continue
        weighted = float(weights.get(precision, 1.0)) * sel.value
        if best is None or weighted > best.weighted_value + 1e-12:
            best = PrecisionSelection(precision, sel, weighted)
    if best is None:
        assert smallest is not None
        raise smallest
    return best


def _units(cost: int, u: int) -> int:
    return -(-int(cost) // u)  # ceil: rounding costs up keeps every selection within the budget


def _add_item(dp: torch.Tensor, units: list[int], values: list[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One module, at most one of its ranks: ``new[c] = max(dp[c], max_r v_r + dp[c - units_r])``.
    Returns the new table and, per cell, the rank option taken (1-based; 0 = module not taken)."""
    K = dp.shape[0]
    new, arg = dp.clone(), torch.zeros(K, dtype=torch.int8)
    for i, (c, v) in enumerate(zip(units, values)):
        if c >= K:
            continue
        cand = dp[: K - c] + v
        better = cand > new[c:]
        torch.maximum(new[c:], cand, out=cand)
        new[c:] = cand
        arg[c:].masked_fill_(better, i + 1)
    return new, arg


def _add_group(dp: torch.Tensor, g: _Group, u: int) -> tuple[torch.Tensor, tuple]:
    """Multiple-choice step for one group: its modules as items, then the shared input paid once."""
    items, args = dp, []
    for ranks_costs, vals in zip(g.costs, g.values):
        items, arg = _add_item(items, [_units(c, u) for c in ranks_costs], vals)
        args.append(arg)
    shift = _units(g.shared_later, u)
    K = dp.shape[0]
    use = torch.zeros(K, dtype=torch.bool)
    new = dp.clone()
    if shift < K:
        cand = items[: K - shift]
        use[shift:] = cand > dp[shift:]
        new[shift:] = torch.where(use[shift:], cand, dp[shift:])
    return new, (use, args)


def _reconstruct(best, groups: list[_Group], trace, u: int, mm: MemoryModel, values, budget: int, frozen) -> Selection:
    _, gi, choice, cell = best
    chosen = dict(choice)
    for later in range(gi + 1, len(groups)):
        g, (use, args) = groups[later], trace[later]
        if not bool(use[cell]):
            continue
        cell -= _units(g.shared_later, u)
        for k in range(len(g.modules) - 1, -1, -1):  # items were added in order: walk back
            i = int(args[k][cell])
            if i > 0:
                chosen[g.modules[k]] = g.ranks[k][i - 1]
                cell -= _units(g.costs[k][i - 1], u)
    predicted = mm.peak_bytes(chosen, frozen=frozen)
    if predicted > budget:  # cannot happen: costs were rounded up; guard the invariant
        raise RuntimeError(f"select_modules: internal error, selection needs {predicted} > budget {budget} bytes")
    value = sum(_value_of(values, m, r) for m, r in chosen.items())
    layer = min(mm.spec.module(m).layer for m in chosen)
    return Selection(dict(sorted(chosen.items())), value, predicted, int(budget), layer)

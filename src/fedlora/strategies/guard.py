"""Aggregation that cannot be poisoned into a crashed or non-finite global state (torch only).

:func:`guarded_aggregate` wraps any strategy's ``aggregate`` (the engine and the Flower server both
call it), method-agnostic:

1. **Outliers.** Each update's scale-aware norm ``N_k = sqrt(sum_m ||s_k B_k A_k||_F^2)`` is computed
   in float64 from the small ``r x r`` Gram matrices (``||BA||_F^2 = tr((A A^T)(B^T B))``, no dense
   ``ΔW``). With at least 3 updates, one whose norm exceeds ``norm_bound x median(N)`` is rejected
   with its norm, the median and the bound (a trained LoRA update rarely moves by more than a few
   times another client's; the default bound, 100, is generous). Finite factors whose norm overflows
   are rejected whatever the count; malformed or NaN factors are left to the strategy's validation,
   which names the problem.
2. **Commit or roll back.** The strategy's state is saved before ``aggregate``; when ``aggregate``
   raises (an SVD that does not converge, an overflow) or leaves a non-finite global adapter (or
   per-client adapter), the saved state is restored, every update of the round is reported rejected
   with the reason, and the round goes on: nothing already trained is lost.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Sequence

import torch

from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies.base import RoundResult

__all__ = ["DEFAULT_NORM_BOUND", "update_norm", "outlier_updates", "guarded_aggregate"]

DEFAULT_NORM_BOUND = 100.0


def update_norm(update: Update) -> float:
    """``sqrt(sum_m ||s B A||_F^2)`` of an update in float64; ``inf`` when finite factors overflow it, ``nan``
    for anything that is not finite 2-D float factors (left to the strategy's validation, which names the problem)."""
    total = 0.0
    for f in update.factors.values():
        if not isinstance(f, LoraFactors) or not isinstance(f.A, torch.Tensor) or not isinstance(f.B, torch.Tensor):
            return math.nan
        if f.A.dim() != 2 or f.B.dim() != 2 or f.A.shape[0] != f.B.shape[1] or not f.A.dtype.is_floating_point:
            return math.nan
        if not (bool(torch.isfinite(f.A).all()) and bool(torch.isfinite(f.B).all())):
            return math.nan
        A, B = f.A.to(torch.float64), f.B.to(torch.float64)
        try:
            scale = float(f.alpha) / max(1, f.rank)
        except (TypeError, ValueError, OverflowError):
            return math.nan
        total += scale * scale * float(torch.trace((A @ A.T) @ (B.T @ B)))
    if math.isnan(total):
        return math.inf
    return math.sqrt(total) if total >= 0 else math.nan


def outlier_updates(updates: Sequence[Update], norm_bound: float = DEFAULT_NORM_BOUND) -> dict[str, str]:
    """Client id -> reason, for updates whose norm overflows or exceeds ``norm_bound x`` the round's median."""
    norms = {u.client_id: update_norm(u) for u in updates}
    out = {cid: "update norm overflows float64 (inf); rejected before aggregation" for cid, n in norms.items() if math.isinf(n)}
    finite = [n for n in norms.values() if math.isfinite(n)]
    if norm_bound and len(finite) >= 3:
        median = statistics.median(finite)
        for cid, n in norms.items():
            if math.isfinite(n) and median > 0 and n > norm_bound * median:
                out[cid] = (f"update norm {n:.3g} is {n / median:.0f}x the round's median {median:.3g} (bound {norm_bound:g}x); "
                            "an outlier is rejected (strategy.norm_bound)")  # fmt: skip
    return out


def _adapters_finite(strategy: Any) -> bool:
    adapters = [strategy.global_adapter()]
    per_client = getattr(strategy, "evaluation_adapters", None)
    if per_client is not None:
        adapters += list(per_client().values())
    return all(bool(torch.isfinite(f.A).all()) and bool(torch.isfinite(f.B).all()) and math.isfinite(float(f.alpha))
               for adapter in adapters for f in adapter.values())  # fmt: skip


def guarded_aggregate(strategy: Any, server_round: int, updates: Sequence[Update], *,
                      norm_bound: float = DEFAULT_NORM_BOUND) -> RoundResult:  # fmt: skip
    """``strategy.aggregate`` with outlier rejection and a rollback on failure (module docstring)."""
    outliers = outlier_updates(updates, norm_bound)
    kept = [u for u in updates if u.client_id not in outliers]
    saved = copy.deepcopy(strategy.state_dict())
    try:
        result = strategy.aggregate(server_round, kept)
        problem = None if _adapters_finite(strategy) else "the aggregate is not finite (overflow)"
    except Exception as err:  # a crash in the method's math must not end the run
        result, problem = None, f"aggregation failed ({type(err).__name__}: {err})"
    if problem is not None:
        strategy.load_state_dict(saved)
        reason = f"{problem}; the global state is left as it was before this round"
        rejected = {u.client_id: reason for u in kept}
        return RoundResult([], {**outliers, **rejected}, {"num_accepted": 0.0, "num_rejected": float(len(updates))})
    result.rejected.update(outliers)
    result.metrics["num_rejected"] = float(len(result.rejected))
    return result

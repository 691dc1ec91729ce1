"""Module values for Fed-pilot's knapsack: normalise and mix a client's local importance with the
global score the server sends. Torch only (plain floats).

``value_m = (1 - w) · local_m / Σ local + w · global_m / Σ global``

Both scores are first normalised to sum to one over the modules (so their scales, e.g. squared
gradient norms vs. update norms, do not matter); a module missing from one side counts as 0 there;
an empty or all-zero side is left out (the other one takes all the weight). ``w = 0`` uses only
local data, ``w = 1`` only the server's view. ``values_per_rank`` turns module values into
``{rank: value}`` tables for a solver that also picks ranks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["normalize", "mix", "values_per_rank"]


def normalize(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores scaled to sum to 1; ``{}`` if empty or all zero. Scores must be finite and >= 0."""
    bad = {m: s for m, s in scores.items() if not (math.isfinite(float(s)) and float(s) >= 0)}
    if bad:
        first = next(iter(bad.items()))
        raise ValueError(f"importance scores must be finite and >= 0; got {len(bad)} bad, e.g. {first[0]!r}: {first[1]!r}")
    total = sum(float(s) for s in scores.values())
    if total <= 0:
        return {}
    return {m: float(s) / total for m, s in scores.items()}


def mix(local: Mapping[str, float], global_: Mapping[str, float] | None, weight: float) -> dict[str, float]:
    """``(1 - weight) · normalize(local) + weight · normalize(global_)`` over the union of modules.

    Args:
        local: the client's scores (``client.importance.module_importance``).
        global_: the server's scores (``FedPilot.global_importance()``); ``None``/empty in round 1.
        weight: share of the global score, in ``[0, 1]``.

    Returns:
        module -> value, summing to 1 (or ``{}`` when both sides are empty or zero).
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"mix: weight is the share of the global score and must be in [0, 1], got {weight!r}")
    lo, gl = normalize(local), normalize(global_ or {})
    if not gl:
        return lo
    if not lo:
        return gl
    w = float(weight)
    return {m: (1 - w) * lo.get(m, 0.0) + w * gl.get(m, 0.0) for m in sorted(set(lo) | set(gl))}


def values_per_rank(values: Mapping[str, float], ranks: Sequence[int], *, exponent: float = 0.5) -> dict[str, dict[int, float]]:
    """``{module: {r: v · (r / r_max)^exponent}}``: diminishing returns of rank (``exponent`` in [0, 1]).

    With ``exponent = 0`` every rank has the same value and the solver picks the cheapest one.
    """
    if not ranks or min(ranks) < 1:
        raise ValueError(f"values_per_rank: ranks must be positive ints, got {list(ranks)}")
    if not 0.0 <= exponent <= 1.0:
        raise ValueError(f"values_per_rank: exponent must be in [0, 1], got {exponent!r}")
    top = max(ranks)
    return {m: {int(r): float(v) * (r / top) ** exponent for r in ranks} for m, v in values.items()}

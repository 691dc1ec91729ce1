"""Client resource profiles: FlexLoRA's heterogeneous rank distributions and memory budgets. Torch only.

FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks
and Client Resources", NeurIPS 2024, section 5 and Fig. 3) draws each client's LoRA configuration
from a few resource distributions over configuration types of increasing size (their types use
ranks 8, 30, 30/200 and 200). Their official code describes them as:

* ``uniform`` (their ``random``): every level equally likely;
* ``heavy-tail-light`` (their ``heavy_tail``): 85 % of clients at the smallest level, the rest
  uniform over the other levels (most clients have little memory);
* ``heavy-tail-strong``: 85 % at the largest level, the rest uniform over the others;
* ``normal``: most clients in the middle levels; fedlora uses a discretised normal over level
  indices, centred on the middle with standard deviation ``(L - 1) / 4`` for ``L`` levels (the
  paper gives no numbers).

fedlora makes the levels configurable (``rank_levels``; default ``DEFAULT_RANK_LEVELS``) and
assigns levels by *quota*: the counts per level are the largest-remainder rounding of
``num_clients · p_level`` and the assignment to clients is a seeded shuffle, so small federations
get the intended mix instead of a noisy sample. Memory budgets (``sample_budgets``) use the same
distributions over budget levels spaced geometrically between ``low_bytes`` and ``high_bytes``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from fedlora.units import parse_bytes  # re-exported: a config reads sizes without torch

__all__ = [
    "DEFAULT_RANK_LEVELS", "RANK_DISTRIBUTIONS", "level_probabilities", "sample_levels", "sample_ranks",
    "sample_budgets", "budget_levels", "budgets_from_list", "parse_bytes",
]  # fmt: skip

DEFAULT_RANK_LEVELS = (8, 16, 30, 50, 100, 150, 200)
"""Rank levels spanning FlexLoRA's configurations (8 ... 200); pass your own for small models."""

_HEAVY = 0.85


def _uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def _heavy(n: int, at: int) -> list[float]:
    if n == 1:
        return [1.0]
    rest = (1.0 - _HEAVY) / (n - 1)
    return [_HEAVY if i == at else rest for i in range(n)]


def _normal(n: int) -> list[float]:
    if n == 1:
        return [1.0]
    centre, sigma = (n - 1) / 2, (n - 1) / 4
    weights = [math.exp(-0.5 * ((i - centre) / sigma) ** 2) for i in range(n)]
    return [w / sum(weights) for w in weights]


RANK_DISTRIBUTIONS: dict[str, Callable[[int], list[float]]] = {
    "uniform": _uniform,
    "heavy-tail-light": lambda n: _heavy(n, 0),
    "heavy-tail-strong": lambda n: _heavy(n, n - 1),
    "normal": _normal,
}
"""Distribution name -> probabilities over ``n`` levels (smallest level first)."""

_ALIASES = {"random": "uniform", "heavy-tail": "heavy-tail-light", "heavy-tail-weak": "heavy-tail-light"}


def _canonical(distribution: str) -> str:
    name = str(distribution).strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in RANK_DISTRIBUTIONS:
        raise ValueError(f"unknown resource distribution {distribution!r}; use one of {sorted(RANK_DISTRIBUTIONS)}")
    return name


def level_probabilities(distribution: str, num_levels: int) -> list[float]:
    """Probabilities of ``distribution`` over ``num_levels`` levels, smallest level first."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    return RANK_DISTRIBUTIONS[_canonical(distribution)](num_levels)


def _quota(probabilities: Sequence[float], total: int) -> list[int]:
    """Largest-remainder rounding of ``total · p`` (ties to the lower level)."""
    raw = [p * total for p in probabilities]
    counts = [math.floor(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample_levels(distribution: str, num_clients: int, num_levels: int, *, seed: int = 0) -> list[int]:
    """Level index (0 = smallest) per client: quota per level, shuffled with ``seed``."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    counts = _quota(level_probabilities(distribution, num_levels), num_clients)
    levels = [i for i, c in enumerate(counts) for _ in range(c)]
    perm = torch.randperm(num_clients, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return [levels[i] for i in perm]


def sample_ranks(
    distribution: str, num_clients: int, *, rank_levels: Sequence[int] = DEFAULT_RANK_LEVELS, seed: int = 0
) -> list[int]:
    """FlexLoRA-style LoRA rank per client.

    Example: ``sample_ranks("heavy-tail-light", 20, rank_levels=(4, 8, 16, 32))`` gives 17 clients
    rank 4 and one client each rank 8, 16, 32, in a seeded order.
    """
    levels = sorted({int(r) for r in rank_levels})
    if not levels or levels[0] < 1:
        raise ValueError(f"rank_levels must be positive ints, got {list(rank_levels)}")
    return [levels[i] for i in sample_levels(distribution, num_clients, len(levels), seed=seed)]


def budget_levels(low_bytes: int, high_bytes: int, num_levels: int) -> list[int]:
    """``num_levels`` budgets spaced geometrically from ``low_bytes`` to ``high_bytes``."""
    if not 0 < low_bytes <= high_bytes:
        raise ValueError(f"need 0 < low_bytes <= high_bytes, got low_bytes={low_bytes}, high_bytes={high_bytes}")
    if num_levels == 1 or low_bytes == high_bytes:
        return [int(low_bytes)] * max(num_levels, 1)
    ratio = (high_bytes / low_bytes) ** (1 / (num_levels - 1))
    return [int(round(low_bytes * ratio**i)) for i in range(num_levels)]


def sample_budgets(
    distribution: str, num_clients: int, *, low_bytes: int | str, high_bytes: int | str, num_levels: int = 4, seed: int = 0
) -> list[int]:
    """Memory budget (bytes) per client: ``distribution`` over ``budget_levels(low, high, num_levels)``.

    ``low_bytes``/``high_bytes`` accept ints or strings such as ``"6GiB"`` (see ``parse_bytes``).
    """
    levels = budget_levels(parse_bytes(low_bytes), parse_bytes(high_bytes), num_levels)
    return [levels[i] for i in sample_levels(distribution, num_clients, num_levels, seed=seed)]


def budgets_from_list(budgets: Sequence[int | str], num_clients: int) -> list[int]:
    """Explicit budgets, one per client (ints or strings like ``"512MiB"``)."""
    if len(budgets) != num_clients:
        raise ValueError(f"budgets lists {len(budgets)} values for {num_clients} clients; give exactly one budget per client")
    return [parse_bytes(b) for b in budgets]



"""Per-round randomness derived from ``(seed, round, client)``: client sampling and client seeds.

Nothing here keeps state, so a resumed run draws exactly what an uninterrupted one would: round
``t`` samples the same clients and client ``k`` trains with the same seed whether or not the
process was restarted in between. Seeds come from SHA-256 (independent of ``PYTHONHASHSEED``).
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Sequence

__all__ = ["derive_seed", "client_ids", "clients_per_round", "sample_clients", "client_seed"]


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from ``seed`` and any further parts (strings, ints)."""
    text = "\x00".join(str(p) for p in (int(seed), *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def client_ids(num_clients: int) -> tuple[str, ...]:
    """``client_000``, ``client_001``, ... (zero-padded so that string order is numeric order)."""
    width = max(3, len(str(num_clients - 1)))
    return tuple(f"client_{i:0{width}d}" for i in range(num_clients))


def clients_per_round(per_round: int | float, num_clients: int) -> int:
    """Clients sampled each round: an int is a count, a float in (0, 1] a fraction (rounded up, >= 1)."""
    if isinstance(per_round, bool) or per_round <= 0:
        raise ValueError(f"clients_per_round must be a positive count or a fraction in (0, 1], got {per_round!r}")
    if isinstance(per_round, float):
        if per_round > 1:
            raise ValueError(f"clients_per_round = {per_round}: a float is a fraction in (0, 1]; use an int for a count")
        return max(1, min(num_clients, math.ceil(per_round * num_clients - 1e-9)))
    if per_round > num_clients:
        raise ValueError(f"clients_per_round = {per_round} is more than the {num_clients} clients")
    return int(per_round)


def sample_clients(ids: Sequence[str], server_round: int, count: int, seed: int) -> list[str]:
    """The ``count`` clients of round ``server_round``, in the order of ``ids`` (all when count >= len)."""
    if count >= len(ids):
        return list(ids)
    chosen = set(random.Random(derive_seed(seed, "sample", server_round)).sample(list(ids), count))
    return [c for c in ids if c in chosen]


def client_seed(seed: int, server_round: int, client_id: str) -> int:
    """Seed of one client's local training in one round (batch order, dropout)."""
    return derive_seed(seed, "client", server_round, client_id)

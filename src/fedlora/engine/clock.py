"""Compute heterogeneity: a simulated clock, client speeds and a round deadline. Pure Python.

Each client has a **speed** (local optimizer steps per simulated second; drawn from
``clients.speed_distribution`` over ``clients.speed_levels`` as ranks and budgets are, or listed in
``clients.speeds``) and, optionally, a **link** of ``clients.link_mb_per_s`` megabytes per second
each way. A client that trains ``n`` steps and moves ``b`` bytes takes

    t = n / speed + b / link                  (simulated seconds; the second term is 0 without a link)

A round lasts until its slowest client has finished, or until ``run.deadline`` when one is set; a
client that cannot finish its ``local_steps`` within the deadline is a **straggler**: with
``run.stragglers = "drop"`` it does not take part (reported, not trained), with ``"partial"`` it
trains the steps that fit, ``⌊(deadline − b / link) · speed⌋`` (at least one, else dropped), as in
FedProx's partial work (Li et al., MLSys 2020). The run's simulated clock is the sum of its rounds.
Simulated time depends only on the config, never on this machine's speed, so it is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["ClientClock", "ClientWork", "schedule_round", "client_clocks", "STRAGGLER_POLICIES"]

STRAGGLER_POLICIES = ("drop", "partial")


@dataclass(frozen=True)
class ClientClock:
    """One client's compute speed (steps per simulated second) and link (bytes per second; 0: free)."""

    speed: float = 1.0
    link: float = 0.0

    def __post_init__(self) -> None:
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"client speed must be a positive finite number of steps per second, got {self.speed!r}")
        if not (self.link >= 0 and math.isfinite(self.link)):
            raise ValueError(f"client link must be >= 0 bytes per second (0: not simulated), got {self.link!r}")

    def transfer_seconds(self, num_bytes: int) -> float:
        return num_bytes / self.link if self.link > 0 else 0.0

    def seconds(self, steps: int, num_bytes: int) -> float:
        """Simulated time to download, train ``steps`` and upload ``num_bytes`` in all."""
        return steps / self.speed + self.transfer_seconds(num_bytes)


@dataclass(frozen=True)
class ClientWork:
    """What a sampled client does this round: ``steps`` to train (0: dropped as a straggler) and when it ends."""

    steps: int
    seconds: float
    straggler: bool


def schedule_round(clocks: Mapping[str, ClientClock], planned_steps: int, num_bytes: Mapping[str, int],
                   deadline: float = 0.0, policy: str = "drop") -> tuple[dict[str, ClientWork], float]:  # fmt: skip
    """Steps and finish time of each client of a round, and the round's simulated length.

    ``num_bytes[cid]`` is what the client downloads plus uploads. Without a deadline (``0``) every
    client trains ``planned_steps`` and the round lasts as long as its slowest client. With one, the
    round lasts ``min(deadline, slowest)``; stragglers are dropped or train partially (``policy``).
    """
    if policy not in STRAGGLER_POLICIES:
        raise ValueError(f"stragglers policy must be one of {STRAGGLER_POLICIES}, got {policy!r}")
    work: dict[str, ClientWork] = {}
    for cid, clock in clocks.items():
        full = clock.seconds(planned_steps, num_bytes.get(cid, 0))
        if deadline <= 0 or full <= deadline:
            work[cid] = ClientWork(planned_steps, full, False)
            continue
        steps = 0
        if policy == "partial":
            steps = max(0, math.floor((deadline - clock.transfer_seconds(num_bytes.get(cid, 0))) * clock.speed + 1e-9))
            steps = min(steps, planned_steps)
        work[cid] = ClientWork(steps, clock.seconds(steps, num_bytes.get(cid, 0)) if steps else deadline, True)
    finished = [w.seconds for w in work.values()]
    length = max(finished, default=0.0)
    if deadline > 0:
        length = min(length, deadline) if not any(w.straggler for w in work.values()) else deadline
    return work, length


def client_clocks(ids: Sequence[str], speeds: Sequence[float], link_mb_per_s: float) -> dict[str, ClientClock]:
    """Clocks for ``ids`` from one speed per client and one link speed in MB/s for all (0: free)."""
    if len(speeds) != len(ids):
        raise ValueError(f"{len(speeds)} speeds for {len(ids)} clients: give one speed per client")
    return {cid: ClientClock(float(s), float(link_mb_per_s) * 1e6) for cid, s in zip(ids, speeds)}

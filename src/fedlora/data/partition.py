"""Split examples among federated clients: by task, Dirichlet task mixtures, or IID.

Every partitioner is deterministic for a given seed, assigns every example to exactly one
client (nothing is dropped), and returns ``num_clients`` non-empty lists. Each raises
``ValueError`` when that is impossible (more clients than examples; for ``partition_by_task``,
a task with fewer examples than the clients that must share it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from fedlora.data.example import Example

__all__ = ["PARTITIONERS", "partition_by_task", "partition_dirichlet", "partition_iid", "partition_examples"]


def _check(examples: Sequence[Example], num_clients: int) -> None:
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if len(examples) < num_clients:
        raise ValueError(
            f"cannot give each of {num_clients} clients at least one example: only {len(examples)} examples; "
            "use fewer clients or more data"
        )


def _by_task(examples: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.task, []).append(ex)
    return dict(sorted(groups.items()))


def _chunks(items: list, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one (the first ones are larger)."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i]: bounds[i + 1]] for i in range(parts)]


def partition_iid(examples: Sequence[Example], num_clients: int, seed: int = 0) -> list[list[Example]]:
    """Shuffle with ``seed`` and deal into ``num_clients`` shards of equal size (+-1)."""
    _check(examples, num_clients)
    pool = list(examples)
    random.Random(seed).shuffle(pool)
    return _chunks(pool, num_clients)


def partition_by_task(examples: Sequence[Example], num_clients: int, seed: int = 0) -> list[list[Example]]:
    """Give clients whole tasks (FlexLoRA's one-task-per-client setting).

    Rule, with T tasks and K clients:
    - K == T: each client gets one task (tasks matched to clients in a seeded random order).
    - K > T: each task is shared by K // T or K // T + 1 clients (client c serves task c mod T
      in a seeded task order), its shuffled examples split in equal parts; every client holds one task.
    - K < T: whole tasks are dealt, largest first (ties in seeded order), each to the client with
      the fewest examples so far; every task stays on one client.
    """
    _check(examples, num_clients)
    rng = random.Random(seed)
    groups = _by_task(examples)
    names = list(groups)
    rng.shuffle(names)
    if num_clients >= len(names):
        sharers = [list(range(t, num_clients, len(names))) for t in range(len(names))]
        clients: list[list[Example]] = [[] for _ in range(num_clients)]
        for name, owners in zip(names, sharers):
            if len(groups[name]) < len(owners):
                raise ValueError(
                    f"task {name!r} has {len(groups[name])} examples but must be shared by {len(owners)} clients; "
                    "use fewer clients or partition_iid/partition_dirichlet"
                )
            pool = groups[name][:]
            rng.shuffle(pool)
            for owner, chunk in zip(owners, _chunks(pool, len(owners))):
                clients[owner] = chunk
        return clients
    clients = [[] for _ in range(num_clients)]
    for name in sorted(names, key=lambda n: -len(groups[n])):  # stable: ties keep the seeded order
        target = min(range(num_clients), key=lambda c: len(clients[c]))
        clients[target].extend(groups[name])
    return clients


def _log_dirichlet(alpha: float, size: int, rng: random.Random) -> list[float]:
    """Log of one Dirichlet(alpha * 1) draw, exact for tiny alpha (no underflow).

    Uses Gamma(a) = Gamma(a + 1) * U ** (1 / a) (Marsaglia and Tsang 2000), in log space.
    """
    logs = [math.log(rng.gammavariate(alpha + 1.0, 1.0)) + math.log(1.0 - rng.random()) / alpha for _ in range(size)]
    top = max(logs)
    norm = top + math.log(sum(math.exp(x - top) for x in logs))
    return [x - norm for x in logs]


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integer counts summing to ``total`` proportional to ``weights`` (ties go to the lower index)."""
    quotas = [total * w for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _fill_empty_clients(clients: list[list[Example]]) -> None:
    """Give each empty client one example taken from the end of the currently largest client."""
    for empty in [c for c, items in enumerate(clients) if not items]:
        donor = max(range(len(clients)), key=lambda c: (len(clients[c]), -c))
        clients[empty].append(clients[donor].pop())


def partition_dirichlet(
    examples: Sequence[Example], num_clients: int, concentration: float, seed: int = 0
) -> list[list[Example]]:
    """Task mixtures drawn from a Dirichlet per client (non-IID by task).

    Each client c draws a task mixture q_c ~ Dir(concentration * 1_T). Task t's examples are then
    split among clients in proportion q_{c,t} / sum_c' q_{c',t} (largest-remainder rounding).
    Large concentration gives every client about the same mix of tasks; small concentration gives
    each client about one task. A client left empty by rounding gets one example from the largest
    client (documented rebalancing; every example is still assigned exactly once).
    """
    _check(examples, num_clients)
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0 (e.g. 0.1 for skewed, 100 for near-IID), got {concentration!r}")
    rng = random.Random(seed)
    groups = _by_task(examples)
    log_q = [_log_dirichlet(concentration, len(groups), rng) for _ in range(num_clients)]
    clients: list[list[Example]] = [[] for _ in range(num_clients)]
    for t, pool in enumerate(groups.values()):
        column = [log_q[c][t] for c in range(num_clients)]
        top = max(column)
        raw = [math.exp(x - top) for x in column]
        counts = _largest_remainder(len(pool), [r / sum(raw) for r in raw])
        pool = pool[:]
        rng.shuffle(pool)
        start = 0
        for c, count in enumerate(counts):
            clients[c].extend(pool[start: start + count])
            start += count
    _fill_empty_clients(clients)
    for items in clients:
        rng.shuffle(items)
    return clients


PARTITIONERS = ("task", "dirichlet", "iid")


def partition_examples(
    examples: Sequence[Example], method: str, num_clients: int, *, seed: int = 0, concentration: float = 0.5
) -> list[list[Example]]:
    """Dispatch by name: ``"task"``, ``"dirichlet"`` (uses ``concentration``) or ``"iid"``."""
    if method == "task":
        return partition_by_task(examples, num_clients, seed)
    if method == "dirichlet":
        return partition_dirichlet(examples, num_clients, concentration, seed)
    if method == "iid":
        return partition_iid(examples, num_clients, seed)
    raise ValueError(f"unknown partition method {method!r}; use one of {list(PARTITIONERS)}")

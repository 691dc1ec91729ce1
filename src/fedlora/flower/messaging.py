"""Send one message per node and collect what comes back, with a deadline: the fault-tolerant
exchange underneath every fedlora round on Flower.

``Grid.send_and_receive`` sends messages and sleeps 3 s between polls in Flower 1.41; this uses
the Grid's public ``push_messages`` / ``pull_messages`` with a short poll instead, and sorts
the outcome per node into replies, errors (the ClientApp raised, crashed, or the node went
offline) and silence (no answer before the deadline, or the node left the federation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["Exchange", "exchange", "connected_nodes", "wait_for_nodes"]

# flwr.common.constant.ErrorCode values that mean "the node did not answer", not "its app failed"
_UNAVAILABLE = {3: "message expired or unavailable", 4: "reply unavailable", 5: "node unavailable"}


@dataclass
class Exchange:
    """What came back from one round of messages.

    Attributes:
        replies: node id -> reply carrying content.
        errors: node id -> reason, for nodes whose ClientApp raised, crashed or did not load.
        missing: node id -> reason, for nodes with no answer by the deadline, that left the
            federation, or that the SuperLink reports unavailable (e.g. killed; its message expired).
        seconds: wall time from push to the last reply (or the deadline).
    """

    replies: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def connected_nodes(grid: Grid) -> list[int]:
    """Node ids the SuperLink currently lists for this run, sorted."""
    return sorted(int(n) for n in grid.get_node_ids())


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll: float = 0.5) -> list[int]:
    """Wait until ``count`` nodes are connected or ``timeout`` seconds pass; return those present."""
    deadline = time.monotonic() + timeout
    nodes = connected_nodes(grid)
    while len(nodes) < count and time.monotonic() < deadline:
        time.sleep(poll)
        nodes = connected_nodes(grid)
    return nodes


def exchange(
    grid: Grid,
    contents: Mapping[int, RecordDict],
    *,
    message_type: str,
    group_id: str,
    timeout: float,
    poll_interval: float = 0.2,
    liveness_interval: float = 5.0,
) -> Exchange:
    """Send ``contents[node]`` to each node and collect replies until all answered or ``timeout``.

    Messages live ``timeout`` seconds (their TTL), so a node that comes back late does not run a
    stale round. Every ``liveness_interval`` seconds the connected nodes are listed again and a
    node that left the federation stops being waited for.
    """
    start = time.monotonic()
    out = Exchange()
    if not contents:
        return out
    ttl = max(float(timeout), 1.0)
    messages = [Message(c, dst_node_id=int(n), message_type=message_type, group_id=group_id, ttl=ttl) for n, c in contents.items()]
    ids = list(grid.push_messages(messages))
    pending = {mid: int(m.metadata.dst_node_id) for mid, m in zip(ids, messages)}
    for node in set(contents) - set(pending.values()):
        out.errors[int(node)] = "the SuperLink did not accept the message (node unknown?)"
    next_liveness = start + liveness_interval
    while pending:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                _sort_reply(out, node, reply)
        now = time.monotonic()
        if not pending or now - start >= timeout:
            break
        if now >= next_liveness:
            next_liveness = now + liveness_interval
            _drop_departed(grid, pending, out)
        time.sleep(poll_interval)
    for node in pending.values():
        out.missing[node] = f"no reply within {timeout:g} s"
    out.seconds = time.monotonic() - start
    return out


def _sort_reply(out: Exchange, node: int, reply: Message) -> None:
    if not reply.has_error():
        out.replies[node] = reply
    elif reply.error.code in _UNAVAILABLE:
        out.missing[node] = f"no reply ({_UNAVAILABLE[reply.error.code]}): {_first_line(reply.error.reason)}"
    else:
        out.errors[node] = f"error code {reply.error.code}: {_first_line(reply.error.reason)}"


def _drop_departed(grid: Grid, pending: dict[str, int], out: Exchange) -> None:
    present = set(connected_nodes(grid))
    for mid, node in list(pending.items()):
        if node not in present:
            del pending[mid]
            out.missing[node] = "the node left the federation"


def _first_line(text: str | None, limit: int = 300) -> str:
    """The last meaningful line of a reason (a traceback's exception line), shortened."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= limit else line[: limit - 3] + "..."

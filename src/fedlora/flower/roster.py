"""Which SuperNode plays which fedlora client, built from the resource-query answers.

A node is refused (and reported) when it names a client the config does not have, when another
node already plays that client, or when its base model's shapes differ from the majority's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fedlora.flower.resources import NodeResources
from fedlora.modelspec import ModelSpec

__all__ = ["Roster", "build_roster", "FederationError"]


class FederationError(RuntimeError):
    """The federation cannot run (too few nodes, nodes disagree on the model, ...)."""


@dataclass
class Roster:
    """The clients of this federation and their nodes.

    Attributes:
        client_ids: clients with a node, in the config's order.
        node_of: client id -> Flower node id.
        resources: client id -> the node's answer to the resource query.
        spec: the base model's shapes, as the nodes reported them.
        refused: node id -> why it takes no part.
        dropped: clients dropped during the run (too many missed rounds).
        absent: clients of the config that no node plays (never connected, or refused).
    """

    client_ids: list[str]
    node_of: dict[str, int]
    resources: dict[str, NodeResources]
    spec: ModelSpec
    refused: dict[int, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    absent: list[str] = field(default_factory=list)

    def report_lines(self) -> list[str]:
        lines = [f"node {self.node_of[c]} -> {self.resources[c].summary()}" for c in self.client_ids]
        lines += [f"node {n} refused: {why}" for n, why in sorted(self.refused.items())]
        if self.absent:
            shown = ", ".join(self.absent[:8]) + (f" and {len(self.absent) - 8} more" if len(self.absent) > 8 else "")
            lines.append(f"{len(self.absent)} of the config's clients have no node (never connected or refused): {shown}; "
                         "the run goes on without them")  # fmt: skip
        return lines


def build_roster(answers: Mapping[int, NodeResources], client_ids: Sequence[str], problems: Mapping[int, str] | None = None) -> Roster:
    """Match node answers to the configured ``client_ids``.

    Args:
        answers: node id -> its resources (nodes that answered the query well).
        client_ids: the clients of the fedlora config, in order.
        problems: node id -> why it could not answer (kept in ``refused``).
    """
    refused = dict(problems or {})
    if not answers:
        raise _no_nodes(refused)
    digests = Counter(res.spec_digest for res in answers.values())
    majority = min(digests.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    known, node_of, resources = set(client_ids), {}, {}
    for node in sorted(answers):
        res = answers[node]
        if res.spec_digest != majority:
            refused[node] = f"its base model's shapes (digest {res.spec_digest}) differ from the other nodes' ({majority}); run the same model everywhere"
        elif res.client_id not in known:
            refused[node] = f"client id {res.client_id!r} is not one of the config's {len(known)} clients; check partition-id / client-id in its --node-config"
        elif res.client_id in node_of:
            refused[node] = f"client {res.client_id!r} is already played by node {node_of[res.client_id]}; give each SuperNode its own partition-id"
        else:
            node_of[res.client_id], resources[res.client_id] = node, res
    if not node_of:
        raise _no_nodes(refused)
    ordered = [c for c in client_ids if c in node_of]
    spec = next(iter(resources.values())).spec
    return Roster(ordered, node_of, resources, spec, refused, absent=[c for c in client_ids if c not in node_of])


def _no_nodes(refused: Mapping[int, str]) -> FederationError:
    detail = "; ".join(f"node {n}: {why}" for n, why in sorted(refused.items())) or "no node answered"
    return FederationError(f"no usable SuperNode ({detail}); start SuperNodes with --node-config 'partition-id=K num-partitions=N'")

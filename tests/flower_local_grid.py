"""An in-process Flower ``Grid``: run a ServerApp's logic against ClientApps in this process.

``fedlora flower simulate`` runs on Flower's own simulation runtime (:mod:`fedlora.flower.simulation`,
Ray). This small Grid stays for the tests and ``fedlora flower simulate --runtime inprocess``, for a
measured reason: a Flower simulation spends 30-50 s starting Ray and a local SuperLink per run on this
project's 2-core machine (a 2-round smoke run: 51 s wall), while the ~25 Flower tests that run a
federation here take a few seconds each in process. Every message goes through
Flower's own wire encoding (records deflated to bytes and inflated back, as the SuperLink does),
each node has its own ``Context`` (node config, persistent state), and ClientApp exceptions come
back as error replies exactly as on a SuperNode. Messages are processed one at a time, in push
order, because the nodes share one base model in this process.

Fault injection for tests: ``silence(node)`` makes a node stop answering (a crash after
receiving), ``depart(node)`` removes it from the federation (it disappears from
``get_node_ids``), ``fail_next[node] = "train"`` makes its next train message fail as a
raising ClientApp would, ``on_deliver`` can alter a reply before the server sees it.

This uses Flower internals (``Run``, ``TaskIdentity`` and the inflatable-object helpers), which a
``Grid`` implementation needs; they are tested with flwr 1.41 and 1.42 (the supported range).
"""

from __future__ import annotations

import traceback
import uuid
from typing import Callable, Iterable, Mapping, Sequence

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid", "wire_roundtrip", "run_in_process"]

SERVER_NODE_ID = 1  # the SuperLink's node id in Flower
CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode


def wire_roundtrip(content: RecordDict) -> RecordDict:
    """``content`` deflated to bytes and inflated back, as it travels through a SuperLink."""
    blobs = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    return inflate_object_from_contents(content.object_id, blobs)


def claim_server_identity(run_id: int = 1) -> None:
    """What Flower's ServerApp runtime sets before a strategy builds its first ``Message``."""
    TaskIdentity.run_id = run_id
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SERVER_NODE_ID


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    Args:
        client_app: the ClientApp every node runs.
        node_configs: one Flower node config per node (e.g. ``{"partition-id": 0, "num-partitions": 3}``).
        run_config: the run config every Context carries (the app's ``[tool.flwr.app.config]``).
        run_id: the run's id.
        wire: encode and decode every message's content as Flower's transport does.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, object]],
        *,
        run_config: Mapping[str, object] | None = None,
        run_id: int = 1,
        wire: bool = True,
    ) -> None:
        self.client_app = client_app
        self.wire = wire
        self.run_config = dict(run_config or {})
        self._run = Run.create_empty(run_id)
        self._run.primary_task_id = 1
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, dict(cfg), RecordDict(), dict(self.run_config)) for i, cfg in enumerate(node_configs)
        }
        self.silent: dict[int, frozenset[str] | None] = {}
        self.departed: set[int] = set()
        self.on_deliver: Callable[[int, Message], Message] | None = None
        self.fail_next: dict[int, str] = {}  # node -> message type whose next delivery fails
        self.delivered: list[tuple[int, str]] = []  # (node, message_type) in delivery order
        self._replies: dict[str, Message] = {}
        self._claim_identity()

    def _claim_identity(self) -> None:
        claim_server_identity(self._run.run_id)

    # ---------------------------------------------------------- fault injection
    def silence(self, node_id: int, message_types: Iterable[str] | None = None) -> None:
        """The node keeps its place in the federation but never answers again (only messages of
        ``message_types`` when given, e.g. ``["train"]``)."""
        self.silent[int(node_id)] = None if message_types is None else frozenset(message_types)

    def depart(self, node_id: int) -> None:
        """The node leaves the federation (no longer listed, never answers)."""
        self.departed.add(int(node_id))

    # ---------------------------------------------------------- Grid API
    def set_run(self, run: Run) -> None:
        self._run = run
        self._claim_identity()

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.departed]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            if node not in self.contexts or node in self.departed:
                continue
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            ids.append(msg.metadata.message_id)
            if not self._is_silent(node, msg.metadata.message_type):
                self._replies[msg.metadata.message_id] = self._deliver(node, msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _is_silent(self, node: int, message_type: str) -> bool:
        if node not in self.silent:
            return False
        types = self.silent[node]
        return types is None or message_type in types

    # ---------------------------------------------------------- delivery
    def _deliver(self, node: int, msg: Message) -> Message:
        self.delivered.append((node, msg.metadata.message_type))
        if self.wire:
            msg = Message(content=wire_roundtrip(msg.content), metadata=msg.metadata)
        try:
            if self.fail_next.get(node) == msg.metadata.message_type:
                del self.fail_next[node]
                raise RuntimeError(f"injected failure on node {node}")
            reply = self.client_app(msg, self.contexts[node])
        except Exception as err:  # a ClientApp error becomes an error reply, as on a SuperNode
            reason = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
        finally:
            self._claim_identity()
        if self.wire and reply.has_content():
            reply = Message(content=wire_roundtrip(reply.content), metadata=reply.metadata)
        if self.on_deliver is not None:
            reply = self.on_deliver(node, reply)
        return reply


def run_in_process(
    server_app,
    client_app: ClientApp,
    node_configs: Sequence[Mapping[str, object]],
    run_config: Mapping[str, object],
    *,
    wire: bool = True,
    hook: Callable[[LocalGrid], None] | None = None,
) -> LocalGrid:
    """Run ``server_app`` against ``client_app`` on in-process nodes; return the grid (for inspection).

    ``hook(grid)`` runs before the server starts (fault injection in tests).
    """
    grid = LocalGrid(client_app, node_configs, run_config=run_config, wire=wire)
    if hook is not None:
        hook(grid)
    context = Context(grid.run.run_id, SERVER_NODE_ID, {}, RecordDict(), dict(run_config))
    server_app(grid, context)
    return grid

"""The fedlora federation loop over a Flower ``Grid``: resource query, per-client train
messages, aggregation by a fedlora strategy, federated evaluation, checkpoints.

Each round (DESIGN.md: plan -> payload -> local training -> update -> aggregation):

1. sample clients among the nodes still in the federation (``recipe.sample``);
2. ``planner.plans`` and ``strategy.configure`` -> one payload per client, sent as one
   ``Message`` to that client's node (FedAvg's same-message-to-all does not fit heterogeneous ranks);
3. collect replies until all came back or ``round-timeout``; a node that errs, stays silent or
   leaves is reported and the round goes on with the rest;
4. decode the updates (a malformed one is rejected with its reason) and aggregate them with the
   strategy, whose validation rejects updates that do not match their plan;
5. evaluate the global adapter on the nodes (each takes a shard of the evaluation sets), log the
   records and checkpoint.

Nothing here loads a model: the server learns the model's shapes from the nodes.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from flwr.app import RecordDict
from flwr.serverapp import Grid

from fedlora.flower import serialization as S
from fedlora.flower.messaging import Exchange, exchange, wait_for_nodes
from fedlora.flower.options import FlowerOptions
from fedlora.flower.recipe import ServerRecipe
from fedlora.strategies.guard import guarded_aggregate
from fedlora.flower.records import client_record, merge_eval, round_line, round_record
from fedlora.flower.resources import NodeResources, content_to_resources
from fedlora.flower.roster import FederationError, Roster, build_roster
from fedlora.flower.store import RunStore

__all__ = ["FlowerServer", "FederationError", "TRAIN", "EVALUATE", "QUERY"]

TRAIN, EVALUATE, QUERY = "train", "evaluate", "query.resources"


class FlowerServer:
    """Runs one fedlora federation over ``grid``.

    Args:
        grid: the Flower Grid (a SuperLink's, or :class:`~fedlora.flower.local_grid.LocalGrid`).
        recipe: what to train (strategy, planner, sampling, seeds), from the fedlora config.
        options: Flower settings (deadlines, minimum replies, output folder).
        log: where progress lines go.
    """

    def __init__(self, grid: Grid, recipe: ServerRecipe, options: FlowerOptions, *, log: Callable[[str], None] = print) -> None:
        self.grid, self.recipe, self.options, self.log = grid, recipe, options, log
        self.store = RunStore(options.out_dir, resume=options.resume, config=recipe.config)
        self.roster: Roster | None = None
        self._missed: dict[str, int] = {}

    # ---------------------------------------------------------------- run
    def run(self) -> list[dict[str, Any]]:
        """Query the nodes, then run every round; returns every metrics record. The results folder is locked meanwhile."""
        try:
            return self._run()
        finally:
            self.store.close()

    def _run(self) -> list[dict[str, Any]]:
        self.roster = self.discover()
        self.strategy = self.recipe.make_strategy(self.roster.spec)
        attach = getattr(self.strategy, "attach_client_store", None)  # personalised methods: per-client state on disk
        if attach is not None:
            attach(self.store.root / "client_state")
        self.planner = self.recipe.make_planner(self.roster.spec, self.roster.resources)
        first, last = self.store.first_round, self.recipe.num_rounds
        if self.store.state is not None:
            self._restore(self.store.state)
        elif self._due(0, self.recipe.eval_every):
            evals = self.evaluate(0)
            if evals:
                self.log("before training: " + ", ".join(f"{e['split']} loss {e['loss']:.4f}" for e in evals if e.get("loss") is not None))
        for rnd in range(first, last + 1):
            record = self.train_round(rnd)
            evals = self.evaluate(rnd) if self._due(rnd, self.recipe.eval_every) else []
            self.log(round_line(record, evals))
            if self._due(rnd, self.recipe.checkpoint_every):
                self.store.save_checkpoint(rnd, self.strategy, self.planner)
        self.store.save_adapter(self.strategy.global_adapter(), self.recipe.model_name)
        return self.store.log.records

    def _due(self, rnd: int, every: int) -> bool:
        return rnd in (0, self.recipe.num_rounds) or (every > 0 and rnd % every == 0)

    def _restore(self, state: dict[str, Any]) -> None:
        """Strategy and planner state from the checkpoint. Nodes dropped before are not: every
        node present at a (re)start gets a fresh chance."""
        self.strategy.load_state_dict(state["strategy"])
        self.planner.load_state_dict(state["planner"])
        self.log(f"resumed from {self.store.checkpoint_path} after round {state['round']}")

    # ---------------------------------------------------------------- resource query
    def discover(self) -> Roster:
        """Wait for the nodes, ask each for its resources, and map nodes to fedlora clients."""
        want = self.options.min_nodes or len(self.recipe.client_ids)
        nodes = wait_for_nodes(self.grid, want, self.options.node_wait_timeout)
        if len(nodes) < want:
            self.log(f"only {len(nodes)} of {want} nodes connected within {self.options.node_wait_timeout:g} s; going on with them")
        out = exchange(self.grid, {n: RecordDict() for n in nodes}, message_type=QUERY, group_id="query", timeout=self.options.query_timeout)
        answers: dict[int, NodeResources] = {}
        problems = {n: f"query failed: {why}" for n, why in {**out.errors, **out.missing}.items()}
        for node, reply in out.replies.items():
            try:
                answers[node] = content_to_resources(reply.content)
            except S.MalformedMessageError as err:
                problems[node] = str(err)
        roster = build_roster(answers, self.recipe.client_ids, problems)
        for line in roster.report_lines():
            self.log(line)
        if len(roster.client_ids) < self.options.min_replies:
            raise FederationError(f"{len(roster.client_ids)} usable nodes < min-replies = {self.options.min_replies}; start more SuperNodes or lower min-replies")
        return roster

    # ---------------------------------------------------------------- training
    def train_round(self, rnd: int) -> dict[str, Any]:
        """One round of training; a node's fault is recorded, never raised."""
        start = time.monotonic()
        available = [c for c in self.roster.client_ids if c not in self.roster.dropped]
        sampled = list(self.recipe.sample(rnd, available))
        plans = self.planner.plans(rnd, sampled, self.strategy)
        payloads = self.strategy.configure(rnd, [plans[c] for c in sampled])
        contents = {
            self.roster.node_of[c]: S.payload_to_content(payloads[c], server_round=rnd, client_seed=self.recipe.client_seed(rnd, c))
            for c in sampled
        }
        out = exchange(self.grid, contents, message_type=TRAIN, group_id=str(rnd), timeout=self.options.round_timeout)
        clients, updates = self._collect(rnd, out, sampled, payloads)
        result, skipped = None, ""
        if len(updates) < self.options.min_replies:
            skipped = f"{len(updates)} updates < min-replies = {self.options.min_replies}; global state unchanged"
        else:
            result = guarded_aggregate(self.strategy, rnd, updates, norm_bound=self.recipe.norm_bound)
            for c in clients:
                if c["client"] in result.rejected:
                    c.update(status="rejected", error=result.rejected[c["client"]])
        dropped = self._track_misses(clients)
        for c in clients:
            self.store.log.append(c)
        record = round_record(rnd, clients, result, timed_out_nodes=len(out.missing), dropped=dropped, skipped=skipped,
                              seconds=time.monotonic() - start, exchange_seconds=out.seconds)  # fmt: skip
        return self.store.log.append(record)

    def _collect(self, rnd: int, out: Exchange, sampled: list[str], payloads: dict) -> tuple[list[dict[str, Any]], list]:
        """Client records in sampling order, and the decoded updates."""
        clients, updates = [], []
        for cid in sampled:
            node = self.roster.node_of[cid]
            reply, update, status, error = out.replies.get(node), None, "ok", ""
            if node in out.errors:
                status, error = "failed", out.errors[node]
            elif node in out.missing:
                status, error = "timed_out", out.missing[node]
            else:
                try:
                    update = S.content_to_update(reply.content, cid)
                    updates.append(update)
                except S.MalformedMessageError as err:
                    status, error = "rejected", str(err)
            clients.append(client_record(rnd, cid, node, payloads[cid], update, status, error))
        return clients, updates

    def _track_misses(self, clients: list[dict[str, Any]]) -> list[str]:
        dropped = []
        for c in clients:
            cid, missed = c["client"], c["status"] in ("failed", "timed_out")
            self._missed[cid] = self._missed.get(cid, 0) + 1 if missed else 0
            if self._missed[cid] >= self.options.max_missed_rounds:
                self.roster.dropped.add(cid)
                dropped.append(cid)
        return dropped

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, rnd: int) -> list[dict[str, Any]]:
        """Federated evaluation of the global adapter; one ``eval`` record per split."""
        clients = [c for c in self.roster.client_ids if c not in self.roster.dropped and self.roster.resources[c].num_eval_examples > 0]
        if self.options.eval_nodes:
            clients = clients[: self.options.eval_nodes]
        if not clients:
            return []
        adapter = self.strategy.global_adapter()
        contents = {self.roster.node_of[c]: S.global_to_content(adapter, server_round=rnd, shard=i, num_shards=len(clients)) for i, c in enumerate(clients)}
        out = exchange(self.grid, contents, message_type=EVALUATE, group_id=f"eval-{rnd}", timeout=self.options.query_timeout)
        if out.errors or out.missing:
            problems = {**out.errors, **out.missing}
            self.log(f"evaluation of round {rnd}: {len(problems)} node(s) did not report: " + "; ".join(f"node {n}: {w}" for n, w in problems.items()))
        records = []
        for split in ("eval", "heldout"):
            rows = [S.record_to_metrics(r.content.metric_records[f"{S.METRICS}.{split}"]) for r in out.replies.values() if f"{S.METRICS}.{split}" in r.content.metric_records]
            if rows:
                records.append(self.store.log.append({"type": "eval", "round": rnd, "split": split, "nodes": len(rows), **merge_eval(rows)}))
        return records

"""Any fedlora method as a Flower strategy, for a Flower user's own ServerApp (flwr 1.41-1.42 Message API).

Swap ``FedAvg`` for fedlora's FlexLoRA (or HetLoRA, FFA-LoRA, FedSA-LoRA, ...) in an existing app::

    from fedlora.flower import FedLoraStrategy

    strategy = FedLoraStrategy("flexlora", modules=peft_module_paths, ranks={node_a: 4, node_b: 16})
    result = strategy.start(grid, initial_arrays=ArrayRecord(), num_rounds=3)
    adapter = strategy.global_adapter()            # fedlora factors; save_peft_adapter(...) exports them

Each sampled node is sent a fedlora train payload (its plan at its own rank, its starting factors:
:mod:`fedlora.flower.serialization`); its ClientApp answers with :func:`fedlora.flower.client_helpers.train_reply`
(fedlora's trainer on the node's model and data) or builds the reply from its own training loop with
:func:`~fedlora.flower.client_helpers.reply_from_factors`. Updates are validated and aggregated by the
fedlora method behind :func:`fedlora.strategies.guard.guarded_aggregate`: a malformed or hostile reply is
rejected and named in the round's metrics; the round goes on.

Flower's wrappers are refused, never ignored: ``DifferentialPrivacyServerSideFixedClipping`` and friends
clip and noise the single ``ArrayRecord`` of FedAvg-style replies and of the aggregate, but a fedlora method
keeps its state in its own factors (per client, at different ranks) and never reads those arrays back, so
the noise would land where nothing reads it: a run that logs "noise added" and trains without privacy.
:meth:`FedLoraStrategy.configure_train` therefore raises :class:`ComposedStrategyError` in round 1, before
any message is sent, when another Flower strategy calls it as its inner ``strategy``, and in any later
round when the arrays it is handed differ from the ones it returned (a wrapper that rewrote them). For
client-level DP use fedlora's DP-FedAvg (``method=DPFedAvg(make_strategy("fedit"), clip_norm=...,
noise_multiplier=...)``, with its accountant's epsilon in the round metrics); against hostile clients,
``norm_bound`` and fedlora's guard (:func:`fedlora.strategies.guard.guarded_aggregate`) reject outliers.
Krum, Bulyan, FedTrimmedAvg and FedMedian take no inner strategy, so they cannot wrap this one.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedlora.allocation.plan import ClientPlan
from fedlora.engine.sampling import derive_seed
from fedlora.flower import serialization as S
from fedlora.lora.factors import Adapter
from fedlora.strategies.guard import guarded_aggregate
from fedlora.strategies.registry import make_strategy

__all__ = ["FedLoraStrategy", "node_client_id", "ComposedStrategyError"]

logger = logging.getLogger(__name__)  # WARNING and above reach stderr even where nothing configures logging

_INSTEAD = ("for client-level DP pass fedlora's DP-FedAvg as the method: FedLoraStrategy(DPFedAvg(make_strategy('fedit'), "
            "clip_norm=C, noise_multiplier=sigma), ...) (fedlora.strategies.dp; its accountant reports epsilon each round); "
            "against hostile clients use FedLoraStrategy(..., norm_bound=...) (fedlora.strategies.guard)")


class ComposedStrategyError(RuntimeError):
    """A Flower strategy wraps :class:`FedLoraStrategy`, whose state its wrapper cannot reach (module docstring)."""


def node_client_id(node_id: int) -> str:
    """fedlora's client id for a Flower node: the server names clients after the node that answers."""
    return f"node-{int(node_id)}"


class FedLoraStrategy(FlowerStrategy):
    """A fedlora method behind Flower's ``Strategy`` interface.

    Args:
        method: a registered fedlora method name (``"flexlora"``, ``"hetlora"``, ...) or a fedlora strategy object.
        modules: PEFT module paths that carry LoRA (``model.layers.0.self_attn.q_proj``, ...).
        ranks: each node's LoRA rank: an int for all, a mapping node id -> rank (others get ``default_rank``),
            or a function of the node id.
        alpha_ratio: LoRA alpha = ``alpha_ratio`` · rank.
        fraction_train, min_train_nodes: nodes sampled per round (seeded by ``seed`` and the round).
        fraction_evaluate: nodes sent the global adapter for evaluation each round (0: none).
        seed: seed of sampling and of the method.
        method_args: keyword arguments of the method (e.g. ``{"gamma": 0.99}`` for HetLoRA).
        norm_bound: guard against outlier update norms (see :func:`fedlora.strategies.guard.guarded_aggregate`).
    """

    def __init__(self, method: str | Any = "flexlora", *, modules: Sequence[str], ranks: int | Mapping[int, int] | Callable[[int], int] = 8,
                 default_rank: int = 8, alpha_ratio: float = 2.0, fraction_train: float = 1.0, min_train_nodes: int = 1,
                 fraction_evaluate: float = 0.0, seed: int = 0, method_args: Mapping[str, Any] | None = None,
                 norm_bound: float = 100.0) -> None:  # fmt: skip
        if not modules:
            raise ValueError("FedLoraStrategy: modules is empty; list the PEFT module paths that carry LoRA")
        if not 0 < fraction_train <= 1 or not 0 <= fraction_evaluate <= 1:
            raise ValueError(f"FedLoraStrategy: fraction_train must be in (0, 1] and fraction_evaluate in [0, 1]; got {fraction_train}, {fraction_evaluate}")
        self.method = make_strategy(method, seed=seed, **dict(method_args or {})) if isinstance(method, str) else method
        self.modules, self.ranks, self.default_rank = list(modules), ranks, int(default_rank)
        self.alpha_ratio, self.fraction_train, self.min_train_nodes = float(alpha_ratio), float(fraction_train), int(min_train_nodes)
        self.fraction_evaluate, self.seed, self.norm_bound = float(fraction_evaluate), int(seed), float(norm_bound)
        self.history: list[dict[str, Any]] = []
        self._returned: ArrayRecord | None = None  # the arrays aggregate_train last returned
        self._sent_bytes = 0  # the arrays' bytes of the last round's train messages

    # ------------------------------------------------------------------ plans

    def rank_of(self, node_id: int) -> int:
        if callable(self.ranks):
            return int(self.ranks(node_id))
        if isinstance(self.ranks, Mapping):
            return int(self.ranks.get(node_id, self.default_rank))
        return int(self.ranks)

    def plan_for(self, node_id: int) -> ClientPlan:
        r = self.rank_of(node_id)
        return ClientPlan.uniform(node_client_id(node_id), self.modules, rank=r, alpha=self.alpha_ratio * r)

    def _sample(self, grid: Grid, server_round: int, fraction: float, minimum: int) -> list[int]:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        count = min(len(nodes), max(minimum, math.ceil(fraction * len(nodes) - 1e-9)))
        return sorted(random.Random(f"{self.seed}-{server_round}-{fraction}").sample(nodes, count)) if count < len(nodes) else nodes

    # ------------------------------------------------------------------ Flower's Strategy interface

    def _refuse_composition(self, wrapper: Any, arrays: ArrayRecord) -> None:
        """Raise :class:`ComposedStrategyError` when ``wrapper`` (the caller) wraps this strategy, or when the
        arrays handed back differ from the ones :meth:`aggregate_train` returned (module docstring)."""
        if wrapper is not self and isinstance(wrapper, FlowerStrategy) and getattr(wrapper, "strategy", None) is self:
            raise ComposedStrategyError(
                f"{type(wrapper).__name__} wraps FedLoraStrategy, but its clipping and noise act on ArrayRecords that a "
                f"fedlora method never reads back (its state is per-client LoRA factors), so it would not take effect; "
                f"{_INSTEAD}")
        if self._returned is not None and not _same_arrays(arrays, self._returned):
            raise ComposedStrategyError(
                "configure_train was handed other arrays than FedLoraStrategy.aggregate_train returned: something between "
                f"them (a wrapper strategy) changed them, and a fedlora method would ignore the change; {_INSTEAD}")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        self._refuse_composition(caller.f_locals.get("self") if caller else None, arrays)
        nodes = self._sample(grid, server_round, self.fraction_train, self.min_train_nodes)
        payloads = self.method.configure(server_round, [self.plan_for(n) for n in nodes])
        messages = []
        for n in nodes:
            content = S.payload_to_content(payloads[node_client_id(n)], server_round=server_round,
                                           client_seed=derive_seed(self.seed, "client", server_round, n))  # fmt: skip
            content["config"] = config
            messages.append(Message(content, dst_node_id=n, message_type="train"))
        self._sent_bytes = sum(S.content_nbytes(m.content) for m in messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, failed, received = [], {}, 0
        for reply in replies:
            cid = node_client_id(reply.metadata.src_node_id)
            received += 0 if reply.has_error() else S.content_nbytes(reply.content)
            if reply.has_error():
                failed[cid] = f"node error {reply.error.code}: {reply.error.reason}"
                continue
            try:
                updates.append(S.content_to_update(reply.content, cid))
            except S.MalformedMessageError as err:
                failed[cid] = f"malformed reply: {err}"
        result = guarded_aggregate(self.method, server_round, updates, norm_bound=self.norm_bound) if updates else None
        rejected = {**failed, **(dict(result.rejected) if result else {})}
        losses = [u.metrics["train_loss"] for u in updates if "train_loss" in u.metrics and u.client_id not in rejected]
        metrics = {"accepted": float(len(result.accepted) if result else 0), "rejected": float(len(rejected)),
                   "bytes_sent": float(self._sent_bytes), "bytes_received": float(received)}  # fmt: skip
        if losses:
            metrics["train_loss"] = sum(losses) / len(losses)
        self.history.append({"round": server_round, "accepted": list(result.accepted) if result else [], "rejected": rejected,
                             "bytes_sent": self._sent_bytes, "bytes_received": received})  # fmt: skip
        for cid, why in sorted(rejected.items()):
            logger.warning("fedlora: round %s rejected %s: %s", server_round, cid, why)
        if not (result and result.accepted):
            logger.warning("fedlora: round %s aggregated no update (%d replies, all failed or rejected); the global "
                           "adapter is unchanged", server_round, len(rejected))  # fmt: skip
        arrays, _ = S.adapter_to_records(self.method.global_adapter())
        self._returned = arrays
        return arrays, MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate <= 0:
            return []
        nodes = self._sample(grid, server_round, self.fraction_evaluate, 1)
        adapter = self.method.global_adapter()
        return [Message(S.global_to_content(adapter, server_round=server_round), dst_node_id=n, message_type="evaluate") for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of the replies' ``fedlora.metrics`` (``n_examples`` weights; 1 when absent)."""
        rows = [S.record_to_metrics(r.content.metric_records.get(S.METRICS, MetricRecord())) for r in replies if not r.has_error()]
        if not rows:
            return None
        weights = [float(m.get("n_examples", 1.0)) for m in rows]
        keys = sorted({k for m in rows for k in m if k != "n_examples"})
        out = {k: sum(w * m[k] for w, m in zip(weights, rows) if k in m) / sum(w for w, m in zip(weights, rows) if k in m) for k in keys}
        return MetricRecord(out | {"n_examples": sum(weights)})

    def summary(self) -> None:
        logger.info("\t├── fedlora method: %s (%d LoRA modules, alpha = %g x rank)", self.method.name, len(self.modules), self.alpha_ratio)
        logger.info("\t└── nodes per round: fraction %g (at least %d); evaluation fraction %g", self.fraction_train,
                    self.min_train_nodes, self.fraction_evaluate)  # fmt: skip

    # ------------------------------------------------------------------ fedlora side

    def global_adapter(self) -> Adapter:
        """The method's global adapter (fedlora factors; ``fedlora.client.peft_bridge.save_peft_adapter`` exports it)."""
        return self.method.global_adapter()


def _same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    """Whether two ArrayRecords hold the same keys and the same bytes."""
    if a is b:
        return True
    if list(a.keys()) != list(b.keys()):
        return False
    return all(a[k].data == b[k].data and a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a.keys())

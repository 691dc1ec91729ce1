"""Metrics records of a Flower run, in the format of the in-process engine's ``metrics.jsonl``
(``fedlora.engine.metrics_log``: ``client``, ``round`` and ``eval`` records), so ``fedlora
report`` reads a Flower run like any other. Flower adds a few fields: per client ``node``,
``pid``, ``process_messages``, ``model_load_seconds`` (what the SuperNode's process did), per
round ``timed_out``, ``dropped``, ``skipped``, ``exchange_seconds``, per evaluation ``nodes``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedlora.lora.factors import Update
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["PROCESS_KEYS", "client_record", "round_record", "merge_eval", "round_line"]

PROCESS_KEYS = ("pid", "process_messages", "model_load_seconds")


def _bytes(adapter: Mapping[str, Any] | None) -> int:
    from fedlora.engine.run import adapter_bytes

    return adapter_bytes(adapter)


def client_record(rnd: int, cid: str, node: int, payload: Payload, update: Update | None, status: str, error: str = "") -> dict[str, Any]:
    """One ``client`` record; ``status`` is ok | failed | rejected | timed_out."""
    from fedlora.engine.run import payload_bytes

    plan = payload.plan
    record: dict[str, Any] = {
        "type": "client", "round": rnd, "client": cid, "node": node, "status": status, "rank": max(plan.ranks.values()),
        "trained_modules": len(plan.trainable_modules), "bytes_down": payload_bytes(payload), "bytes_up": 0,
    }  # fmt: skip
    if update is not None:
        m = update.metrics
        record.update(num_examples=update.num_examples, bytes_up=_bytes(update.factors))
        for key, name in (("train_loss", "loss"), ("train_loss_first", "loss_first"), ("train_loss_last", "loss_last"), ("seconds", "seconds")):
            if key in m:
                record[name] = m[key]
        if "steps" in m:
            record["steps"] = int(m["steps"])
        if "trained_modules" in m:  # a client-side rule chose fewer modules than the plan allowed (Fed-HeLLo)
            record["trained_modules"] = int(m["trained_modules"])
        record.update({k: m[k] for k in PROCESS_KEYS if k in m})
    if error:
        record["error"] = error
    return record


def round_record(rnd: int, clients: Sequence[dict[str, Any]], result: RoundResult | None, **extra: Any) -> dict[str, Any]:
    """The ``round`` record from its client records and the aggregation result."""
    ok = [c for c in clients if c["status"] == "ok"]
    by_status = {s: {c["client"]: c.get("error", "") for c in clients if c["status"] == s} for s in ("failed", "rejected", "timed_out")}
    record: dict[str, Any] = {
        "type": "round", "round": rnd, "clients": [c["client"] for c in clients], "accepted": len(ok), **by_status,
        "train_loss": sum(c["loss"] for c in ok) / len(ok) if ok and all("loss" in c for c in ok) else None,
        "bytes_down": sum(c["bytes_down"] for c in clients), "bytes_up": sum(c["bytes_up"] for c in clients),
    }  # fmt: skip
    if result is not None:
        record.update({f"strategy/{k}": v for k, v in result.metrics.items()})
    record.update(extra)
    return record


def _count_key(key: str) -> str:
    """The count a metric is a mean over: ``n_cls`` (accuracy, majority, chance), ``n_gen`` (Rouge-L) or ``n_examples``."""
    prefix, _, leaf = key.rpartition("/")
    prefix = prefix + "/" if prefix else ""
    base = leaf.removesuffix("_se")
    if base in ("accuracy", "majority", "chance"):
        return prefix + "n_cls"
    if base.startswith("rougeL"):
        return prefix + "n_gen"
    return prefix + ("n_tokens" if base == "loss" else "n_examples")


def merge_eval(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Merge the evaluation shards of several nodes into the metrics of their union.

    Means are pooled by their counts (accuracy, majority and chance by ``n_cls``, Rouge-L by ``n_gen``,
    the token-weighted loss by ``n_tokens``); the standard error of a per-example mean is pooled exactly from each
    shard's mean, SE and count (sum of squares ``(n-1) n se^2 + n mean^2``); the loss SE (a ratio) as
    that of the count-weighted mean of independent shards. ``majority`` becomes the count-weighted
    mean of the shards' majority rates, an upper bound of the union's (shards may favour different
    labels). Counts are summed, ``seconds`` is the slowest. One shard comes back unchanged.
    """
    if len(rows) == 1:
        return dict(rows[0])
    out: dict[str, float] = {}
    keys = sorted({k for r in rows for k in r})
    for key in keys:
        if key == "seconds":
            out[key] = max(r.get(key, 0.0) for r in rows)
        elif key.rsplit("/", 1)[-1] in ("n_examples", "n_cls", "n_gen", "n_tokens"):
            out[key] = sum(r.get(key, 0.0) for r in rows)
        elif not key.endswith("_se"):
            have = [(r[key], r.get(_count_key(key), 0.0), r.get(f"{key}_se")) for r in rows if r.get(key) is not None]
            total = sum(n for _, n, _ in have)
            if total <= 0:
                continue
            mean = sum(v * n for v, n, _ in have) / total
            out[key] = mean
            if all(se is not None for _, _, se in have) and have[0][2] is not None:
                out[f"{key}_se"] = _pooled_se(key, have, mean, total)
    return out


def _pooled_se(key: str, have: Sequence[tuple[float, float, float]], mean: float, total: float) -> float:
    if key.rsplit("/", 1)[-1] == "loss":
        return sum((n * se) ** 2 for _, n, se in have) ** 0.5 / total
    squares = sum((n - 1) * n * se**2 + n * v**2 for v, n, se in have)
    var = max(0.0, (squares - total * mean**2) / (total - 1)) if total > 1 else 0.0
    return (var / total) ** 0.5


def round_line(rnd: dict[str, Any], evals: Sequence[dict[str, Any]] = ()) -> str:
    """One progress line for a round record (and its evaluations)."""
    parts = [f"round {rnd['round']}: {rnd['accepted']}/{len(rnd['clients'])} accepted in {rnd['seconds']:.1f} s"]
    if rnd.get("train_loss") is not None:
        parts.append(f"train_loss {rnd['train_loss']:.4f}")
    parts += [f"{e['split']} loss {e['loss']:.4f}" for e in evals if e.get("loss") is not None]
    for label in ("rejected", "failed", "timed_out"):
        if rnd.get(label):
            parts.append(f"{label}: " + "; ".join(f"{c} ({why})" for c, why in sorted(rnd[label].items())))
    if rnd.get("dropped"):
        parts.append(f"dropped for the rest of the run: {', '.join(rnd['dropped'])}")
    if rnd.get("skipped"):
        parts.append(f"SKIPPED: {rnd['skipped']}")
    return " | ".join(parts)

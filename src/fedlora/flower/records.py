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


def merge_eval(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Merge shard metrics: each metric averaged weighted by its examples (``task/<t>/...`` by
    ``task/<t>/n_examples``, others by ``n_examples``); counts summed, ``seconds`` the slowest."""
    out: dict[str, float] = {}
    keys = sorted({k for r in rows for k in r})
    for key in keys:
        if key == "seconds":
            out[key] = max(r.get(key, 0.0) for r in rows)
            continue
        if key.endswith("n_examples"):
            out[key] = sum(r.get(key, 0.0) for r in rows)
            continue
        weight = key.rsplit("/", 1)[0] + "/n_examples" if key.startswith("task/") else "n_examples"
        have = [(r[key], r.get(weight, 0.0)) for r in rows if key in r and r[key] is not None]
        total = sum(w for _, w in have)
        if total > 0:
            out[key] = sum(v * w for v, w in have) / total
    return out


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

"""One-line text of an evaluation record: each metric with its standard error, accuracy beside the majority rate."""

from __future__ import annotations

from typing import Mapping

__all__ = ["metric_line"]


def _with_se(record: Mapping, key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    se = record.get(f"{key}_se")
    return f"{key} {value:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def metric_line(record: Mapping) -> str:
    """``accuracy 0.7125 ± 0.0230 (majority 0.5000, n=400)  rougeL ...  loss ...`` for the metrics present."""
    parts = []
    acc = _with_se(record, "accuracy")
    if acc is not None:
        extra = f"majority {record['majority']:.4f}" if record.get("majority") is not None else ""
        n = record.get("n_cls")
        parts.append(acc + f" ({extra}{', ' if extra and n else ''}{f'n={int(n)}' if n else ''})")
    for key in ("rougeL", "rougeL_tf", "loss"):
        text = _with_se(record, key)
        if text is not None:
            parts.append(text + (f" (n={int(record['n_gen'])})" if key == "rougeL" and record.get("n_gen") else ""))
    return "  ".join(parts)

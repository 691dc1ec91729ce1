"""The run's metrics log: one JSON object per line in ``run_dir/metrics.jsonl``.

Record types (field ``type``):
- ``client``: one per client per round: ``round``, ``client``, ``status`` (ok | failed | rejected),
  ``rank`` (largest planned rank), ``trained_modules``, ``num_examples``, ``loss`` (mean over steps),
  ``loss_first``, ``loss_last``, ``steps``, ``seconds``, ``bytes_down`` (the payload's starting
  factors and any FLoRA base delta) and ``bytes_up`` (the trained factors of the update; FFA-LoRA's
  frozen ``A`` is not sent), counted from the actual tensors; ``predicted_peak_bytes`` (the memory model's
  peak of the client's step, :mod:`fedlora.allocation.memory`, with the run's base precision) and on CUDA
  ``peak_bytes`` (measured, ``torch.cuda.max_memory_allocated``); ``error`` when it failed or was rejected.
- ``round``: one per round: ``round``, ``clients``, ``accepted``, ``failed``, ``rejected``,
  ``train_loss`` (mean of the clients' losses), ``seconds``, ``bytes_down``/``bytes_up`` totals and
  the strategy's own metrics under ``strategy/``.
- ``eval``: ``round`` (0 = before training), ``split`` (eval | heldout), ``seconds`` and every
  metric of :func:`fedlora.eval.evaluate` (``rougeL``, ``rougeL_tf``, ``loss``, ``accuracy``, per task).
Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Any, Iterable

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends records to ``path`` (flushed per record) and keeps them in memory for the checkpoint."""

    def __init__(self, path: str | Path, records: Iterable[dict] = ()) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self.listeners: list[Callable[[dict], None]] = []  # called with each appended record (experiment trackers)
        self.reset(records)

    def reset(self, records: Iterable[dict]) -> None:
        """Rewrite the file with exactly ``records`` (atomically), e.g. those of a checkpoint on resume."""
        self.records = [_clean(dict(r)) for r in records]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)

    def append(self, record: dict) -> dict:
        record = _clean(dict(record))
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)
        return record

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == kind]


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics file (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run folder written by `fedlora run`")
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i + 1 < len(lines):  # only the last line may be torn (a process killed mid-write)
                raise ValueError(f"{path}:{number}: not a JSON record ({err.msg} at column {err.colno}); "
                                 "the metrics log is corrupted before its last line") from None  # fmt: skip
            warnings.warn(f"{path}:{number}: the last line is torn (a run killed while writing it); ignoring it", stacklevel=2)
    return records

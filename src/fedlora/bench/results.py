"""Results of a bench: one row per finished cell, mean ± std over seeds, CSV and Markdown tables.

Metrics are named ``<split>/<metric>``: the value of the *last* evaluation of that split in the
cell's metrics log (``heldout/rougeL``, ``eval/rougeL_tf``, ...), or ``train/loss`` (the mean local
training loss of the last round). Traffic is the sum of the engine's per-round ``bytes_up`` and
``bytes_down`` (counted from the factor tensors actually sent); wall time is the run's own
``seconds`` (summed across resumes).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

RESULT_FILE = "result.json"
"""A finished cell's result in its run folder (written by ``fedlora.bench.runner.run_cell``)."""

__all__ = ["RESULT_FILE", "CellRow", "Aggregate", "final_metric", "metric_series", "traffic_series", "collect", "aggregate",
           "write_tables", "markdown_tables", "fmt_mean_std", "estimate_seconds", "lower_is_better", "endpoint_value", "time_split"]  # fmt: skip


@dataclass
class CellRow:
    """One finished cell: its grid coordinates, final metrics, traffic, wall time and metrics log."""

    cell: str
    method: str
    distribution: str
    seed: int
    final: dict[str, float | None]
    bytes_up: int
    bytes_down: int
    seconds: float
    clients: int
    rounds: int
    records: list[dict] = field(default_factory=list, repr=False)
    plan: str | None = None  # the bench-side plan (fedlora.bench.baselines.PLAN_MODES), None for a method's own
    rouge_tokenizer: str = "latin-only"  # fedlora.eval.metrics.ROUGE_TOKENIZER of the run; cells before it: latin-only


@dataclass
class Aggregate:
    """Mean and sample standard deviation over the seeds of one (method, distribution)."""

    method: str
    distribution: str
    n: int
    mean: dict[str, float | None]
    std: dict[str, float | None]


def _split_key(metric: str) -> tuple[str, str]:
    split, _, key = metric.partition("/")
    return split, key


def metric_series(records: Sequence[dict], metric: str) -> list[tuple[int, float]]:
    """``(round, value)`` of ``metric`` over a run's evaluations (``train/loss``: per round)."""
    split, key = _split_key(metric)
    if split == "train":
        key = "train_loss" if key == "loss" else key
        rows = [r for r in records if r.get("type") == "round"]
    else:
        rows = [r for r in records if r.get("type") == "eval" and r.get("split") == split]
    points = {int(r["round"]): float(r[key]) for r in rows if r.get(key) is not None}
    return sorted(points.items())


def final_metric(records: Sequence[dict], metric: str) -> float | None:
    """Value of ``metric`` at the last round it was measured, or None."""
    series = metric_series(records, metric)
    return series[-1][1] if series else None


def lower_is_better(metric: str) -> bool:
    """Losses improve downwards; every other metric (Rouge-L, accuracy) upwards."""
    return metric.rsplit("/", 1)[-1].endswith("loss")


def endpoint_value(records: Sequence[dict], metric: str, last_rounds: int = 1) -> float | None:
    """Mean of ``metric`` over the last ``last_rounds`` evaluated rounds after training (round 0, the
    untrained model, only when nothing later was evaluated: the ``no-train`` baseline); None when
    fewer than ``last_rounds`` such rounds were evaluated."""
    series = metric_series(records, metric)
    trained = [v for r, v in series if r > 0]
    if not trained:
        return series[-1][1] if series else None
    if len(trained) < last_rounds:
        return None
    return statistics.fmean(trained[-last_rounds:])


def traffic_series(records: Sequence[dict]) -> list[tuple[int, int, int]]:
    """``(round, bytes_up, bytes_down)`` per round."""
    return [(int(r["round"]), int(r["bytes_up"]), int(r["bytes_down"])) for r in records if r.get("type") == "round"]


def collect(out_dir: str | Path, cell_ids: Sequence[str] | None = None) -> list[CellRow]:
    """Rows of the finished cells under ``out_dir/cells`` (only ``cell_ids`` when given, in that order)."""
    from fedlora.engine.metrics_log import read_metrics

    root = Path(out_dir) / "cells"
    found = sorted(p.name.removesuffix(".json") for p in root.iterdir()) if root.is_dir() else []
    names = list(cell_ids) if cell_ids is not None else list(dict.fromkeys(found))
    rows = []
    for name in names:
        path, published = root / name / RESULT_FILE, root / f"{name}.json"
        if path.is_file():
            r, records = json.loads(path.read_text(encoding="utf-8")), read_metrics(root / name)
        elif published.is_file():  # a published cell (fedlora.bench.runner.publish_cell): records inside
            r = json.loads(published.read_text(encoding="utf-8"))
            records = r.get("records", [])
        else:
            continue
        rows.append(CellRow(r["cell"], r["method"], r["distribution"], int(r["seed"]), r["final"], int(r["bytes_up"]),
                            int(r["bytes_down"]), float(r["seconds"] or 0.0), int(r["clients"]), int(r["rounds"]),
                            records, r.get("plan"), r.get("rouge_tokenizer", "latin-only")))  # fmt: skip
    return rows


def time_split(records: Sequence[dict]) -> tuple[float, float]:
    """``(training, evaluation)`` seconds of a cell: the sums of its rounds' and evaluations' own ``seconds``
    (the rest of its wall time is set-up: data, model, planning)."""
    train = sum(float(r.get("seconds") or 0.0) for r in records if r.get("type") == "round")
    evaluation = sum(float(r.get("seconds") or 0.0) for r in records if r.get("type") == "eval")
    return train, evaluation


def estimate_seconds(pending_methods: Sequence[str], rows: Sequence[CellRow]) -> float | None:
    """Wall seconds that cells of ``pending_methods`` would take, one after another.

    Each pending cell counts the mean ``seconds`` of the finished ``rows`` of its method, or of all
    finished rows while its method has none; ``None`` when nothing has finished to estimate from.
    """
    timed = [r for r in rows if r.seconds > 0]
    if not timed:
        return None
    overall = statistics.fmean(r.seconds for r in timed)
    by_method: dict[str, list[float]] = {}
    for r in timed:
        by_method.setdefault(r.method, []).append(r.seconds)
    return sum(statistics.fmean(by_method[m]) if m in by_method else overall for m in pending_methods)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows: Sequence[CellRow], metrics: Sequence[str]) -> list[Aggregate]:
    """Mean ± std over seeds per (method, distribution), in the order rows first show them."""
    groups: dict[tuple[str, str], list[CellRow]] = {}
    for row in rows:
        groups.setdefault((row.method, row.distribution), []).append(row)
    out = []
    for (method, dist), group in groups.items():
        mean, std = {}, {}
        columns = {m: [g.final.get(m) for g in group] for m in metrics}
        columns.update(bytes_up=[g.bytes_up for g in group], bytes_down=[g.bytes_down for g in group], seconds=[g.seconds for g in group])
        for name, values in columns.items():
            mean[name], std[name] = _mean_std(values)
        out.append(Aggregate(method, dist, len(group), mean, std))
    return out


def fmt_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}"


def markdown_tables(rows: Sequence[CellRow], aggs: Sequence[Aggregate], metrics: Sequence[str],
                    labels: dict[str, str] | None = None) -> tuple[str, str]:  # fmt: skip
    """``(summary table, per-cell table)`` in Markdown."""
    labels = labels or {}
    head = ["method", "distribution", "seeds", *metrics, "MB up", "MB down", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in aggs:
        cells = [labels.get(a.method, a.method), a.distribution, str(a.n)]
        cells += [fmt_mean_std(a.mean[m], a.std[m], a.n) for m in metrics]
        cells += [_mb(a.mean["bytes_up"]), _mb(a.mean["bytes_down"]), fmt_mean_std(a.mean["seconds"], a.std["seconds"], a.n, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    summary = "\n".join(lines)
    head = ["cell", "method", "distribution", "seed", "clients", "rounds", *metrics, "bytes up", "bytes down", "wall s",
            "training s", "evaluation s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = ["-" if r.final.get(m) is None else f"{r.final[m]:.4f}" for m in metrics]
        train, evaluation = time_split(r.records)
        lines.append("| " + " | ".join([r.cell, r.method, r.distribution, str(r.seed), str(r.clients), str(r.rounds), *vals,
                                        str(r.bytes_up), str(r.bytes_down), f"{r.seconds:.0f}", f"{train:.0f}",
                                        f"{evaluation:.0f}"]) + " |")  # fmt: skip
    return summary, "\n".join(lines)


def write_tables(rows: Sequence[CellRow], aggs: Sequence[Aggregate], metrics: Sequence[str], out_dir: str | Path,
                 *, title: str = "bench", labels: dict[str, str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Write ``results.csv`` (per cell), ``summary.csv`` (mean/std per method and distribution) and ``results.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"cells_csv": out / "results.csv", "summary_csv": out / "summary.csv", "markdown": out / "results.md"}
    with paths["cells_csv"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cell", "method", "distribution", "seed", "clients", "rounds", *metrics, "bytes_up", "bytes_down", "seconds"])
        for r in rows:
            w.writerow([r.cell, r.method, r.distribution, r.seed, r.clients, r.rounds, *[_csv(r.final.get(m)) for m in metrics],
                        r.bytes_up, r.bytes_down, f"{r.seconds:.2f}"])  # fmt: skip
    columns = [*metrics, "bytes_up", "bytes_down", "seconds"]
    with paths["summary_csv"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "distribution", "n"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")])
        for a in aggs:
            w.writerow([a.method, a.distribution, a.n] + [_csv(x) for c in columns for x in (a.mean[c], a.std[c])])
    summary, per_cell = markdown_tables(rows, aggs, metrics, labels)
    paths["markdown"].write_text(f"# {title}\n\n## Mean ± std over seeds\n\n{summary}\n\n## Every cell\n\n{per_cell}\n", encoding="utf-8")
    return paths


def _csv(x: Any) -> str:
    return "" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))

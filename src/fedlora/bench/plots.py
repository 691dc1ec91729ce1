"""Bench plots (matplotlib, Agg backend, small PNGs):

* ``metric_per_round.png``: the primary metric per round, one panel per resource distribution, one
  line per method (mean over seeds, band = 95% Student-t interval of the mean); a bench that evaluates
  only the final model (``run.eval_every = 0``) shows round 0 (the untrained model) and the last round;
* ``train_loss_per_round.png``: the same for the clients' mean training loss, which every round records;
* ``final_metric.png``: the final primary metric per method and distribution (dots, so that small
  differences stay visible), error bars = 95% interval of the mean over seeds;
* ``communication.png``: bytes up and down per round per method (mean over the method's cells), from
  the engine's metrics log;
* ``wall_time.png``: wall time per method and distribution, error bars = 95% interval over seeds;
* ``forest_<claim>.png`` (:func:`plot_forest`, benches with pre-registered claims): each comparison's
  paired difference with its adjusted interval, zero and the ±δ equivalence band. Unlike
  ``final_metric.png`` (unpaired intervals per method, which overlap even where the paired
  difference is decided), this is the picture of the verdicts.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from fedlora.bench.results import Aggregate, CellRow, metric_series, traffic_series

__all__ = ["plot_bench", "plot_forest", "PLOT_FILES"]

PLOT_FILES = ("metric_per_round.png", "train_loss_per_round.png", "final_metric.png", "communication.png", "wall_time.png")
_DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def ci_half_width(std: float | None, n: int) -> float:
    """Half-width of the 95% Student-t interval of a mean of ``n`` values with sample std ``std`` (0 for n < 2)."""
    if n < 2 or std is None:
        return 0.0
    from fedlora.eval.stats import t_quantile

    return t_quantile(0.975, n - 1) * std / math.sqrt(n)


def _mean_std_by_round(series: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """Per round: the mean over the series and the half-width of its 95% interval."""
    by_round: dict[int, list[float]] = {}
    for s in series:
        for rnd, v in s:
            by_round.setdefault(rnd, []).append(v)
    rounds = sorted(by_round)
    means = [statistics.fmean(by_round[r]) for r in rounds]
    half = [ci_half_width(statistics.stdev(by_round[r]), len(by_round[r])) if len(by_round[r]) > 1 else 0.0 for r in rounds]
    return rounds, means, half


def _rows_of(rows: Sequence[CellRow], method: str, dist: str) -> list[CellRow]:
    """The method's cells under ``dist``, or under its only distribution (a reference such as no-train)."""
    own = [r for r in rows if r.method == method]
    dists = {r.distribution for r in own}
    return [r for r in own if r.distribution == dist or len(dists) == 1]


def _order(rows: Sequence[CellRow], attr: str, given: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(getattr(r, attr) for r in rows))
    return [x for x in given if x in seen] if given else seen


def plot_metric_per_round(rows, metric, methods, dists, labels, path: Path) -> Path:
    plt = _plt()
    cols = min(len(dists), 4)
    nrows = math.ceil(len(dists) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 1.6, 3.0 * nrows), squeeze=False, sharey=True)
    colors = _colors(methods)
    for ax, dist in zip(axes.flat, dists):
        for m in methods:
            series = [metric_series(r.records, metric) for r in _rows_of(rows, m, dist)]
            if not any(series):
                continue
            xs, mean, std = _mean_std_by_round(series)
            ax.plot(xs, mean, marker="o", ms=3, color=colors[m], label=labels.get(m, m))
            ax.fill_between(xs, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], color=colors[m], alpha=0.15)
        ax.set(title=dist, xlabel="round")
        _integer_x(ax)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(dists):]:
        ax.axis("off")
    axes[0][0].set_ylabel(metric)
    handles, names = axes[0][0].get_legend_handles_labels()
    start = "" if metric.startswith("train/") else "; round 0: the untrained model"
    fig.suptitle(f"{metric} per round (mean over seeds, band: 95% interval{start})", fontsize=10)
    fig.tight_layout()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grouped_bars(aggs: Sequence[Aggregate], key: str, methods, dists, labels, ylabel: str, title: str, path: Path,
                  *, points: bool = False) -> Path:  # fmt: skip
    """Per distribution, one bar (or, with ``points``, one dot: small differences stay visible) per method, with its 95% interval."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(dists) * max(1, len(methods)) * 0.45 + 2.5), 3.6))
    colors, width = _colors(methods), 0.8 / max(1, len(methods))
    table = {(a.method, a.distribution): a for a in aggs}
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, d in enumerate(dists):
            a = table.get((m, d))
            if a is not None and a.mean.get(key) is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(a.mean[key])
                es.append(ci_half_width(a.std[key], a.n))
        if points:
            ax.errorbar(xs, ys, yerr=es, fmt="o", ms=5, capsize=3, color=colors[m], label=labels.get(m, m))
        else:
            ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=colors[m], label=labels.get(m, m))
    ax.set_xticks(range(len(dists)), dists, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, path)


def plot_communication(rows, methods, labels, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
    colors = _colors(methods)
    for idx, (ax, name) in enumerate(zip(axes, ("up (clients → server)", "down (server → clients)"))):
        for m in methods:
            series = [[(rnd, (up if idx == 0 else down) / 1e6) for rnd, up, down in traffic_series(r.records)] for r in rows if r.method == m]
            if not any(series):
                continue
            xs, mean, _ = _mean_std_by_round(series)
            ax.plot(xs, mean, marker="o", ms=3, color=colors[m], label=labels.get(m, m))
        ax.set(title=name, xlabel="round")
        _integer_x(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MB per round (mean over cells)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("communication per round, counted from the tensors sent", fontsize=10)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    if not fig.legends:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path


def plot_forest(comparisons: Sequence[Any], delta: float, title: str, labels: dict[str, str], path: Path) -> Path:
    """Forest plot of a claim: one row per comparison (baseline @ distribution), the paired mean difference
    with its displayed interval (primary: Bonferroni-adjusted at the look; exploratory: 95%, grey), the
    zero line and the ``±delta`` equivalence band. ``comparisons``: :class:`fedlora.bench.design.ComparisonResult`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(comparisons) + 1.4))
    ax.axvspan(-delta, delta, color="tab:green", alpha=0.12, label=f"±δ = ±{delta:g} (equivalence)")
    ax.axvline(0.0, color="black", linewidth=0.8)
    for i, c in enumerate(comparisons):
        y = len(comparisons) - 1 - i
        color = "grey" if c.exploratory else "tab:blue"
        ax.errorbar(c.diff, y, xerr=[[c.diff - c.ci_low], [c.ci_high - c.diff]], fmt="o", color=color, capsize=3)
    names = [f"{labels.get(c.baseline, c.baseline)} @ {c.distribution}{' (exploratory)' if c.exploratory else ''}: {c.verdict}"
             for c in comparisons]  # fmt: skip
    ax.set_yticks(range(len(comparisons)), list(reversed(names)))
    ax.set_xlabel("paired difference, method − baseline (> 0: method better)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_bench(rows: Sequence[CellRow], aggs: Sequence[Aggregate], metric: str, out_dir: str | Path, *,
               methods: Sequence[str] | None = None, distributions: Sequence[str] | None = None,
               labels: dict[str, str] | None = None) -> list[Path]:  # fmt: skip
    """Write the plots of :data:`PLOT_FILES` into ``out_dir``; returns their paths (none without rows)."""
    if not rows:
        return []
    out, labels = Path(out_dir), labels or {}
    methods, dists = _order(rows, "method", methods), _order(rows, "distribution", distributions)
    return [
        plot_metric_per_round(rows, metric, methods, dists, labels, out / PLOT_FILES[0]),
        plot_metric_per_round(rows, "train/loss", methods, dists, labels, out / PLOT_FILES[1]),
        _grouped_bars(aggs, metric, methods, dists, labels, metric, f"final {metric} (error bars: 95% interval over seeds)", out / PLOT_FILES[2],
                      points=True),
        plot_communication(rows, methods, labels, out / PLOT_FILES[3]),
        _grouped_bars(aggs, "seconds", methods, dists, labels, "seconds", "wall time per cell (error bars: 95% interval over seeds)", out / PLOT_FILES[4]),
    ]  # fmt: skip

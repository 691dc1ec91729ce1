"""Run reports from a metrics log: the before/after summary table and PNG plots per round.

``run_summary(records)`` condenses a run (first and last evaluation of each split, training loss,
traffic, failures); ``summary_table`` renders it with rich; ``plot_run`` writes
``train_loss.png``, ``eval.png`` and ``communication.png`` (matplotlib, Agg backend).
``fedlora report RUN_DIR`` prints the table again and writes the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["SUMMARY_METRICS", "run_summary", "summary_table", "compare_table", "print_summary", "plot_run", "change_verdict",
           "verdict_lines", "related_map"]

SUMMARY_METRICS = ("accuracy", "majority", "rougeL", "rougeL_tf", "loss")
"""Metrics of each evaluation split shown before/after, with their ``_se`` (per-task rows add ``task/<name>/accuracy|rougeL``)."""
_HIGHER_IS_BETTER = ("accuracy", "rougeL", "rougeL_tf")


def _evals(records: Sequence[dict], split: str) -> list[dict]:
    return sorted((r for r in records if r.get("type") == "eval" and r.get("split") == split), key=lambda r: r["round"])


def run_summary(records: Sequence[dict]) -> dict[str, Any]:
    """Plain-dict summary: per split the first and last evaluation, per-round training loss, traffic, failures."""
    rounds = [r for r in records if r.get("type") == "round"]
    clients = [r for r in records if r.get("type") == "client"]
    splits = {}
    for split in ("eval", "heldout"):
        evals = _evals(records, split)
        if evals:
            splits[split] = {"before": _metrics(evals[0]), "after": _metrics(evals[-1]),
                             "before_round": evals[0]["round"], "after_round": evals[-1]["round"]}  # fmt: skip
    return {
        "rounds": len(rounds),
        "train_loss": [r.get("train_loss") for r in rounds],
        "bytes_up": sum(r["bytes_up"] for r in rounds),
        "bytes_down": sum(r["bytes_down"] for r in rounds),
        "failed_clients": sum(1 for c in clients if c.get("status") == "failed"),
        "rejected_updates": sum(1 for c in clients if c.get("status") == "rejected"),
        "stragglers_dropped": sum(1 for c in clients if c.get("status") == "straggler"),
        "stragglers_partial": sum(1 for c in clients if c.get("partial")),
        "sim_clock": float(rounds[-1].get("sim_clock", 0.0)) if rounds else 0.0,
        "splits": splits,
        **({"privacy/epsilon": rounds[-1]["privacy/epsilon"], "privacy/delta": rounds[-1].get("privacy/delta")}
           if rounds and rounds[-1].get("privacy/epsilon") is not None else {}),
    }


def _metrics(record: dict) -> dict[str, float]:
    tasks = ("/rougeL", "/accuracy", "/majority", "/rougeL_se", "/accuracy_se")
    keep = set(SUMMARY_METRICS) | {f"{m}_se" for m in SUMMARY_METRICS} | {"n_cls", "n_gen", "n_examples"}
    keep |= {k for k in record if k.startswith("task/") and k.endswith(tasks)}
    return {k: record[k] for k in sorted(record) if k in keep and record[k] is not None}


def _row_names(before: dict, after: dict) -> list[str]:
    names = [m for m in SUMMARY_METRICS if m in before or m in after]
    tasks = sorted(k for k in set(before) | set(after) if k.startswith("task/") and not k.endswith(("_se", "/majority")))
    return names + tasks


def change_verdict(before: dict, after: dict, metric: str) -> tuple[float, float, str] | None:
    """``(change, its standard error, verdict)`` of ``metric`` from ``before`` to ``after`` (same examples).

    The SE combines the two evaluations' SEs as if independent, ``sqrt(se_b^2 + se_a^2)``: conservative,
    since scores of the same examples before and after are positively correlated. Verdict: ``better`` /
    ``worse`` when the change exceeds 1.96 SE, else ``no change detected``.
    """
    b, a = before.get(metric), after.get(metric)
    if a is None or b is None or f"{metric}_se" not in before or f"{metric}_se" not in after:
        return None
    se = (before[f"{metric}_se"] ** 2 + after[f"{metric}_se"] ** 2) ** 0.5
    up = a - b
    if abs(up) <= 1.96 * se:
        return up, se, "no change detected"
    better = (up > 0) == (metric.rsplit("/", 1)[-1] in _HIGHER_IS_BETTER)
    return up, se, "better" if better else "worse"


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """One line per split: accuracy against the majority rate and Rouge-L, before and after, and what changed.

    With ``summary["heldout_related"]`` (held-out task -> its sibling training task, from ``data.heldout_related``),
    each held-out task also gets its own line, marked related (to which training task) or unrelated: a gain
    on a sibling of a training task is transfer of that task, not to unseen tasks in general."""
    lines = []
    related = summary.get("heldout_related") or {}
    for split, s in summary["splits"].items():
        lines += _split_lines(split, s["before"], s["after"])
        if split != "heldout" or not related:
            continue
        for task in sorted({k.split("/")[1] for k in s["after"] if k.startswith("task/")}):
            kind = f"related to training task {related[task]}" if task in related else "unrelated to every training task"
            lines += _split_lines(f"heldout {task} ({kind})", _task_part(s["before"], task), _task_part(s["after"], task))
    return lines


def related_map(pairs: Sequence[str]) -> dict[str, str]:
    """``data.heldout_related``'s ``'heldout=training'`` pairs as ``{heldout task: training task}``."""
    return dict(str(p).split("=", 1) for p in pairs if "=" in str(p))


def _task_part(metrics: dict, task: str) -> dict:
    prefix = f"task/{task}/"
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def _split_lines(label: str, b: dict, a: dict) -> list[str]:
    parts = []
    if "accuracy" in a:
        v = change_verdict(b, a, "accuracy")
        margin = a["accuracy"] - a.get("majority", float("nan"))
        parts.append(f"likelihood accuracy {_pm(b, 'accuracy')} → {_pm(a, 'accuracy')} (majority rate {a.get('majority', float('nan')):.3f}; "
                     f"after − majority {margin:+.3f}){'' if v is None else f': {v[2]} ({v[0]:+.3f} ± {1.96 * v[1]:.3f})'}")
    if "rougeL" in a:
        v = change_verdict(b, a, "rougeL")
        parts.append(f"Rouge-L {_pm(b, 'rougeL')} → {_pm(a, 'rougeL')}{'' if v is None else f': {v[2]} ({v[0]:+.3f} ± {1.96 * v[1]:.3f})'}")
    return [f"{label}: " + "; ".join(parts)] if parts else []


def _pm(record: dict, metric: str) -> str:
    se = record.get(f"{metric}_se")
    return f"{record[metric]:.3f}" + ("" if se is None else f" ± {se:.3f}")


def summary_table(summary: dict[str, Any], title: str = "fedlora run"):
    """A ``rich.table.Table``: one row per split and metric, before (round 0) / after (last eval) / change."""
    from rich.table import Table

    table = Table(title=f"{title}: {summary['rounds']} rounds")
    for col, justify in (("split", "left"), ("metric", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        table.add_column(col, justify=justify)
    for split, s in summary["splits"].items():
        label = f"{split} (r{s['before_round']}→r{s['after_round']})"
        for name in _row_names(s["before"], s["after"]):
            b, a = s["before"].get(name), s["after"].get(name)
            verdict = change_verdict(s["before"], s["after"], name)
            change = "" if a is None or b is None else f"{a - b:+.4f}"
            style = "" if verdict is None or verdict[2] == "no change detected" else ("green" if verdict[2] == "better" else "red")
            table.add_row(label, name, _fmt_se(s["before"], name), _fmt_se(s["after"], name), f"[{style}]{change}[/]" if style else change)
            label = ""
    losses = [x for x in summary["train_loss"] if x is not None]
    if losses:
        table.add_row("train", "loss (round 1 → last)", _fmt(losses[0]), _fmt(losses[-1]), f"{losses[-1] - losses[0]:+.4f}")
    privacy = (f"; privacy: epsilon {summary['privacy/epsilon']:.3g} at delta {summary['privacy/delta']:g}"
               if summary.get("privacy/epsilon") is not None else "")
    table.caption = (f"traffic ↓{summary['bytes_down'] / 1e6:.1f} MB ↑{summary['bytes_up'] / 1e6:.1f} MB{privacy}; "
                     f"failed clients {summary['failed_clients']}, rejected updates {summary['rejected_updates']}"
                     + (f", stragglers dropped {summary['stragglers_dropped']} / partial {summary['stragglers_partial']}"
                        if summary.get("stragglers_dropped") or summary.get("stragglers_partial") else "")
                     + (f"; simulated clock {summary['sim_clock']:.1f} s" if summary.get("sim_clock") else "")
                     + (f"; {summary['seconds']:.0f} s" if "seconds" in summary else ""))  # fmt: skip
    return table


def compare_table(summaries: dict[str, dict[str, Any]], title: str = "fedlora runs"):
    """A ``rich.table.Table`` with one row per run: held-out and eval Rouge-L before/after, loss, traffic."""
    from rich.table import Table

    table = Table(title=title)
    columns = ("run", "rounds", "heldout rougeL before", "heldout rougeL after", "eval rougeL after", "eval accuracy after",
               "train loss last", "MB down", "MB up")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, s in summaries.items():
        held, seen = s["splits"].get("heldout", {}), s["splits"].get("eval", {})
        losses = [x for x in s["train_loss"] if x is not None]
        table.add_row(name, str(s["rounds"]), _fmt(held.get("before", {}).get("rougeL")), _fmt(held.get("after", {}).get("rougeL")),
                      _fmt(seen.get("after", {}).get("rougeL")), _fmt(seen.get("after", {}).get("accuracy")),
                      _fmt(losses[-1] if losses else None), f"{s['bytes_down'] / 1e6:.1f}", f"{s['bytes_up'] / 1e6:.1f}")  # fmt: skip
    return table


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _fmt_se(record: dict, name: str) -> str:
    if record.get(name) is None:
        return "-"
    se = record.get(f"{name}_se")
    return f"{record[name]:.4f}" + ("" if se is None else f" ± {se:.4f}")


def print_summary(summary: dict[str, Any], console: Any = None, title: str = "fedlora run") -> None:
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(summary, title))
    for line in verdict_lines(summary):
        console.print(f"verdict {line}")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """Write the run's plots into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_plot_train_loss(records, out / "train_loss.png"), _plot_eval(records, out / "eval.png"),
               _plot_traffic(records, out / "communication.png")]  # fmt: skip
    return [p for p in written if p is not None]


def _plot_train_loss(records: Sequence[dict], path: Path) -> Path | None:
    clients = [r for r in records if r.get("type") == "client" and r.get("loss") is not None]
    rounds = [r for r in records if r.get("type") == "round" and r.get("train_loss") is not None]
    if not rounds:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([c["round"] for c in clients], [c["loss"] for c in clients], s=12, alpha=0.4, label="clients")
    ax.plot([r["round"] for r in rounds], [r["train_loss"] for r in rounds], marker="o", label="mean")
    ax.set(xlabel="round", ylabel="local training loss", title="training loss per round")
    ax.legend()
    return _save(fig, path)


def _plot_eval(records: Sequence[dict], path: Path) -> Path | None:
    evals = [r for r in records if r.get("type") == "eval"]
    if not evals:
        return None
    plt = _plt()
    metrics = [m for m in ("accuracy", "rougeL", "rougeL_tf", "loss") if any(r.get(m) is not None for r in evals)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for split in ("eval", "heldout"):
            points = [(r["round"], r[metric], r.get(f"{metric}_se") or 0.0) for r in _evals(records, split) if r.get(metric) is not None]
            if points:
                xs, ys, se = zip(*points)
                line = ax.errorbar(xs, ys, yerr=[1.96 * e for e in se], marker="o", capsize=3, label=f"{split} (95% CI)")
                majority = [r.get("majority") for r in _evals(records, split) if r.get("majority") is not None]
                if metric == "accuracy" and majority:  # the rate of always answering the most frequent label
                    ax.axhline(majority[-1], linestyle="--", color=line[0].get_color(), alpha=0.7, label=f"{split} majority rate")
        ax.set(xlabel="round", title=metric)
        ax.legend()
    return _save(fig, path)


def _plot_traffic(records: Sequence[dict], path: Path) -> Path | None:
    rounds = [r for r in records if r.get("type") == "round"]
    if not rounds:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rounds]
    ax.bar([x - 0.2 for x in xs], [r["bytes_down"] / 1e6 for r in rounds], width=0.4, label="down (server → clients)")
    ax.bar([x + 0.2 for x in xs], [r["bytes_up"] / 1e6 for r in rounds], width=0.4, label="up (clients → server)")
    ax.set(xlabel="round", ylabel="MB", title="communication per round")
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

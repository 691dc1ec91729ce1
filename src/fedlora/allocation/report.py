"""What the planner decided, for people: a per-client table and a layer x module-kind heat map.

``fedlora plan CONFIG.toml`` prints ``plan_table`` and writes ``plan_heatmap``. rich and
matplotlib are imported inside the functions (Agg backend), so importing this module stays light.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from fedlora.allocation.memory import format_bytes
from fedlora.allocation.plan import ClientPlan
from fedlora.modelspec import ModelSpec

__all__ = ["plan_rows", "plan_table", "training_counts", "plan_heatmap"]

_COLUMNS = ("client", "budget", "predicted", "use", "trained", "layers", "ranks", "value")


def _layers(spec: ModelSpec | None, modules) -> str:
    if spec is None or not modules:
        return "-"
    layers = sorted({spec.module(m).layer for m in modules})
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def plan_rows(
    plans: Sequence[ClientPlan], predictions: Sequence[int] | None = None, budgets: Sequence[int] | None = None,
    values: Sequence[float] | None = None, spec: ModelSpec | None = None, precisions: Sequence[str] | None = None,
) -> list[dict[str, str]]:  # fmt: skip
    """One dict of formatted cells per client (keys: ``_COLUMNS``, and ``base`` when ``precisions`` are given)."""
    for name, seq in (("predictions", predictions), ("budgets", budgets), ("values", values)):
        if seq is not None and len(seq) != len(plans):
            raise ValueError(f"plan_table: {name} has {len(seq)} entries for {len(plans)} plans; give one per plan")
    rows = []
    for i, plan in enumerate(plans):
        trained = plan.trainable_modules
        pred = None if predictions is None else predictions[i]
        budget = None if budgets is None else budgets[i]
        ranks = sorted({plan.ranks[m] for m in trained})
        rows.append({
            "client": plan.client_id,
            "budget": "-" if budget is None else format_bytes(budget),
            "predicted": "-" if pred is None else format_bytes(pred),
            "use": "-" if pred is None or not budget else f"{100 * pred / budget:.0f}%",
            "trained": f"{len(trained)}/{len(plan.ranks)}",
            "layers": _layers(spec, trained),
            "ranks": ",".join(map(str, ranks)) or "-",
            "value": "-" if values is None else f"{values[i]:.3g}",
        } | ({} if precisions is None else {"base": precisions[i]}))  # fmt: skip
    return rows


def plan_table(
    plans: Sequence[ClientPlan], predictions: Sequence[int] | None = None, budgets: Sequence[int] | None = None,
    values: Sequence[float] | None = None, *, spec: ModelSpec | None = None, text: bool = False,
    precisions: Sequence[str] | None = None,
):  # fmt: skip
    """A ``rich.table.Table`` of the plans (``text=True``: the same table as a plain string).

    Columns: client, budget, predicted peak, budget use, trained/adapted modules, trained layer
    range (needs ``spec``), ranks, summed value; with ``precisions`` (several in the run), each client's base precision.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedlora plan")
    columns = _COLUMNS + (("base",) if precisions is not None else ())
    for col in columns:
        table.add_column(col, justify="left" if col in ("client", "layers", "ranks", "base") else "right")
    for row in plan_rows(plans, predictions, budgets, values, spec, precisions):
        table.add_row(*(row[c] for c in columns))
    if not text:
        return table
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(table)
    return console.export_text()


def training_counts(plans: Sequence[ClientPlan], spec: ModelSpec) -> tuple[list[str], list[list[int]]]:
    """``(kinds, counts)``: ``counts[layer][k]`` = number of clients training that module."""
    kinds = list(dict.fromkeys(m.kind for m in spec.modules))
    counts = [[0] * len(kinds) for _ in range(spec.num_layers)]
    for plan in plans:
        for m in plan.trainable_modules:
            mod = spec.module(m)
            counts[mod.layer][kinds.index(mod.kind)] += 1
    return kinds, counts


def plan_heatmap(plans: Sequence[ClientPlan], spec: ModelSpec, path: str | Path, *, title: str | None = None) -> Path:
    """PNG heat map (layers x module kinds) of how many clients train each module; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds, counts = training_counts(plans, spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height = max(3.0, 0.22 * spec.num_layers + 1.5)
    fig, ax = plt.subplots(figsize=(1.0 * len(kinds) + 2.5, height))
    image = ax.imshow(counts, aspect="auto", cmap="viridis", vmin=0, vmax=max(len(plans), 1), origin="lower")
    ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
    ax.set_ylabel("layer")
    ax.set_title(title or f"clients training each module ({len(plans)} clients)")
    if spec.num_layers <= 40:
        for layer, row in enumerate(counts):
            for k, c in enumerate(row):
                ax.text(k, layer, str(c), ha="center", va="center", fontsize=7, color="white" if c < 0.6 * len(plans) else "black")
    fig.colorbar(image, ax=ax, label="clients")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

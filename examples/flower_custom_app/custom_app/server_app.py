"""The user's ServerApp: Flower's usual ``strategy.start(...)`` loop, with fedlora's strategy object."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedlora.client.peft_bridge import save_peft_adapter
from fedlora.config import ModelSection
from fedlora.engine.build import spec_of_section
from fedlora.flower import FedLoraStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    spec = spec_of_section(ModelSection(name=str(cfg["model"])))  # from the model's configuration: no weights loaded
    modules = [m.name for m in spec.modules]  # the PEFT module paths that carry LoRA
    ranks = [int(r) for r in str(cfg["ranks"]).split(",")]
    nodes = sorted(grid.get_node_ids())
    strategy = FedLoraStrategy(str(cfg["method"]), modules=modules, ranks={n: ranks[i % len(ranks)] for i, n in enumerate(nodes)})
    result = strategy.start(grid, initial_arrays=ArrayRecord(), num_rounds=int(cfg["num-server-rounds"]))

    out = Path(str(cfg["out-dir"]))
    save_peft_adapter(strategy.global_adapter(), out / "adapter", base_model_name_or_path=str(cfg["model"]))
    train_metrics = {r: dict(m) for r, m in result.train_metrics_clientapp.items()}
    (out / "history.json").write_text(json.dumps({"train": train_metrics, "rounds": strategy.history}, indent=2, default=str))
    print(f"[custom-app] done: adapter and history in {out}", flush=True)

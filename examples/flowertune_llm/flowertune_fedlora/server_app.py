"""ServerApp: fedlora's strategy in Flower's ``strategy.start`` loop; PEFT checkpoints where FlowerTune's evaluation reads them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedlora.client.peft_bridge import save_peft_adapter
from fedlora.engine.build import spec_of_section
from fedlora.flower import FedLoraStrategy

from .settings import CHALLENGE_SUPERNODES, read_settings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    s = read_settings(context.run_config)
    modules = [m.name for m in spec_of_section(s.model).modules if m.kind in s.model.target_modules]  # no weights loaded
    nodes = sorted(grid.get_node_ids())
    if len(nodes) != CHALLENGE_SUPERNODES:
        print(f"[flowertune-fedlora] {len(nodes)} SuperNodes: not a leaderboard run, which has {CHALLENGE_SUPERNODES} "
              f"(--federation-config 'num-supernodes={CHALLENGE_SUPERNODES}')", flush=True)  # fmt: skip
    ranks = {n: s.rank_of_partition(k) for k, n in enumerate(nodes)}  # node k trains at level k mod len(levels)
    strategy = FedLoraStrategy(s.method, modules=modules, ranks=ranks, alpha_ratio=s.alpha_ratio, fraction_train=s.fraction_fit)
    out = Path(s.results_dir) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = s.model.name

    def save(server_round: int, arrays: ArrayRecord) -> None:
        if server_round and (server_round == s.rounds or server_round % s.save_every == 0):
            save_peft_adapter(strategy.global_adapter(), out / f"peft_{server_round}", base_model_name_or_path=base)

    strategy.start(grid, initial_arrays=ArrayRecord(), num_rounds=s.rounds, evaluate_fn=lambda r, a: save(r, a))
    rounds = [{k: h[k] for k in ("round", "bytes_sent", "bytes_received")} | {"nodes": len(h["accepted"])} for h in strategy.history]
    total = sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)
    (out / "communication.json").write_text(json.dumps({"total_bytes": total, "rounds": rounds}, indent=2))
    print(f"[flowertune-fedlora] ranks by node {sorted(set(ranks.values()))}; communication {total / 2**20:.1f} MiB "
          f"over {len(rounds)} rounds; the last PEFT adapter: {out / f'peft_{s.rounds}'}", flush=True)  # fmt: skip

"""fedlora.engine: the in-process federation (one base model, many simulated clients).

Modules: ``run`` (the round loop, :class:`Engine`), ``build`` (config -> model, strategy, trainer
config), ``data`` (examples and partitions), ``plans`` (ranks, budgets, per-round plans),
``sampling`` (per-round randomness from ``(seed, round, client)``), ``checkpoint`` (atomic,
resumable), ``metrics_log`` (JSONL records), ``progress`` (rich bars and log lines),
``importance`` (Fed-pilot's local module scores).

Run folder layout: ``config.toml`` (the resolved config), ``metrics.jsonl``, ``checkpoint.pt``,
``summary.json``, ``client_errors.log`` (tracebacks of failed clients, if any), and after
``fedlora report``/``export``: ``plots/*.png``, ``export/adapter`` (PEFT), ``export/merged``.
"""

from fedlora.engine.data import FederatedData, build_data
from fedlora.engine.plans import Planner, client_budgets, client_ranks
from fedlora.engine.progress import Progress, RichProgress
from fedlora.engine.run import Engine, RunError, RunResult, run_dir_for
from fedlora.engine.sampling import client_ids, client_seed, clients_per_round, derive_seed, sample_clients

__all__ = [
    "Engine",
    "RunError",
    "RunResult",
    "run_dir_for",
    "FederatedData",
    "build_data",
    "Planner",
    "client_ranks",
    "client_budgets",
    "Progress",
    "RichProgress",
    "client_ids",
    "client_seed",
    "clients_per_round",
    "derive_seed",
    "sample_clients",
]

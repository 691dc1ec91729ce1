"""Who trains what: client profiles, rank distributions, memory cost model, knapsack, plans. Torch only.

profiles.py        FlexLoRA rank distributions, memory budgets, ``parse_bytes``
memory.py          per-module training-memory model of a ``ModelSpec``, calibrated on measured peaks
knapsack.py        exact module (and rank) selection under a memory budget (Fed-pilot)
importance_mix.py  local + global module values
planner.py         ``plan_flexlora``, ``plan_fedpilot`` -> ``ClientPlan`` per client
report.py          plan table and layer x module heat map
"""

from fedlora.allocation.importance_mix import mix, normalize, values_per_rank
from fedlora.allocation.knapsack import BudgetTooSmallError, Selection, select_modules
from fedlora.allocation.memory import (
    DEFAULT_CALIBRATION,
    OPTIMIZER_STATES,
    Calibration,
    Measurement,
    MemoryModel,
    fit_calibration,
    format_bytes,
)
from fedlora.allocation.plan import ClientPlan
from fedlora.allocation.planner import fedpilot_selections, plan_fedpilot, plan_flexlora, plans_from_selections, target_modules
from fedlora.allocation.profiles import (
    DEFAULT_RANK_LEVELS,
    RANK_DISTRIBUTIONS,
    budgets_from_list,
    parse_bytes,
    sample_budgets,
    sample_ranks,
)
from fedlora.allocation.report import plan_heatmap, plan_table, training_counts

__all__ = [
    "ClientPlan",
    "RANK_DISTRIBUTIONS", "DEFAULT_RANK_LEVELS", "sample_ranks", "sample_budgets", "budgets_from_list", "parse_bytes",
    "MemoryModel", "Calibration", "DEFAULT_CALIBRATION", "Measurement", "fit_calibration", "OPTIMIZER_STATES", "format_bytes",
    "select_modules", "Selection", "BudgetTooSmallError",
    "normalize", "mix", "values_per_rank",
    "plan_flexlora", "plan_fedpilot", "fedpilot_selections", "plans_from_selections", "target_modules",
    "plan_table", "plan_heatmap", "training_counts",
]  # fmt: skip

"""Who trains what: client profiles, rank distributions, memory cost model, knapsack, plans. Torch only."""

from fedlora.allocation.plan import ClientPlan

__all__ = ["ClientPlan"]

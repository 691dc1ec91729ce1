"""Federated LoRA methods behind one Strategy protocol. Torch only."""

from fedlora.strategies.base import Payload, RoundResult, Strategy
from fedlora.strategies.fedit import FedIT
from fedlora.strategies.ffa import FFALoRA
from fedlora.strategies.flexlora import FlexLoRA
from fedlora.strategies.flora import FLoRA
from fedlora.strategies.hetlora import HetLoRA, prune_rank, tail_norm_penalty
from fedlora.strategies.registry import STRATEGY_NAMES, make_strategy, strategy_class

__all__ = [
    "Payload",
    "RoundResult",
    "Strategy",
    "FedIT",
    "FlexLoRA",
    "HetLoRA",
    "FLoRA",
    "FFALoRA",
    "tail_norm_penalty",
    "prune_rank",
    "STRATEGY_NAMES",
    "make_strategy",
    "strategy_class",
]

"""Federated LoRA methods behind one Strategy protocol. Torch only."""

from fedlora.strategies.base import Payload, RoundResult, Strategy

__all__ = ["Payload", "RoundResult", "Strategy"]

"""Pure LoRA tensor math: factors, updates, linear algebra, validation. Imports torch only."""

from fedlora.lora.factors import Adapter, LoraFactors, Update

__all__ = ["Adapter", "LoraFactors", "Update"]

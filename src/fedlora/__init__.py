"""fedlora: federated fine-tuning of LLMs with LoRA across heterogeneous clients."""

__version__ = "0.1.0"

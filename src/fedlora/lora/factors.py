"""LoRA factors of one module, a whole adapter, and a client's update.

Convention (DESIGN.md section 2): a module's update is ``ΔW = (alpha / rank) · B @ A`` with
``A`` of shape ``[rank, d_in]`` and ``B`` of shape ``[d_out, rank]``. An adapter maps PEFT module
paths (``model.layers.3.self_attn.q_proj``) to factors; ranks may differ per module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

__all__ = ["LoraFactors", "Adapter", "Update"]


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA adapter: ``ΔW = scale · B @ A`` with ``scale = alpha / rank``.

    Attributes:
        A: down-projection, shape ``[rank, d_in]``.
        B: up-projection, shape ``[d_out, rank]``.
        alpha: LoRA alpha; the scale is ``alpha / rank``.
    """

    A: torch.Tensor
    B: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank if self.rank else 0.0

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense update ``scale · B @ A`` of shape ``[d_out, d_in]`` (for references and tests)."""
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))

    def num_parameters(self) -> int:
        return self.A.numel() + self.B.numel()


Adapter = dict[str, LoraFactors]
"""A whole adapter: PEFT module path -> factors."""


@dataclass
class Update:
    """What a client sends back after local training.

    Attributes:
        client_id: the client that trained it.
        factors: the trained adapter (only the modules of the client's plan).
        num_examples: local training examples, the default aggregation weight.
        metrics: local metrics such as ``train_loss``.
    """

    client_id: str
    factors: Mapping[str, LoraFactors]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)

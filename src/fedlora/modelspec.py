"""A plain description of a model's LoRA-targetable shapes, with no model import.

Allocation (memory model, knapsack) and strategies work on this description, never on an
``nn.Module``; ``fedlora.models.model_spec`` builds it from a loaded Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModuleSpec", "ModelSpec"]


@dataclass(frozen=True)
class ModuleSpec:
    """One linear module that can carry a LoRA adapter.

    Attributes:
        name: PEFT module path, e.g. ``model.layers.3.self_attn.q_proj``.
        d_in: input features. d_out: output features.
        layer: decoder layer index (0 = closest to the embeddings).
        kind: short module type, e.g. ``q_proj``.
    """

    name: str
    d_in: int
    d_out: int
    layer: int
    kind: str


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a decoder-only transformer that the memory model and planners need.

    Attributes:
        modules: every LoRA-targetable linear module, in layer order.
        num_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
        vocab_size: architecture sizes (from the model config).
        num_parameters: total parameters of the base model.
        param_bytes: bytes per base-model parameter (2 for bf16, 4 for fp32).
    """

    modules: tuple[ModuleSpec, ...]
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    num_parameters: int
    param_bytes: int = 4

    def module(self, name: str) -> ModuleSpec:
        for spec in self.modules:
            if spec.name == name:
                return spec
        raise KeyError(f"module {name!r} is not in the model spec; known kinds: {sorted({m.kind for m in self.modules})}")

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

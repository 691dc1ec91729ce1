"""A frozen low-rank update merged into the shared base weights (FLoRA), kept across clients.

FLoRA (Wang et al., 2024) merges the stacked global update ``ΔW = s · B @ A`` into the base
weights each round and starts every client from a fresh LoRA. With one base model per process,
the merge is done once per ``base_delta_version`` and kept while clients of the same round train;
when the version changes (or ``None`` is asked for) the original weights come back **exactly**
from copies of the affected modules only, before the next delta is added. Memory: one copy of
each affected weight matrix, nothing for the rest of the model.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch

from fedlora.lora.factors import LoraFactors

__all__ = ["BaseDelta"]


def _base_linear(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"base_delta names module {path!r}, which is not in the model; use full module paths "
            "from model.named_modules() (e.g. 'model.layers.0.self_attn.q_proj')"
        ) from None
    if hasattr(module, "get_base_layer"):  # a PEFT LoRA layer wraps the original
        module = module.get_base_layer()
    if not isinstance(getattr(module, "weight", None), torch.Tensor) or module.weight.dim() != 2:
        raise ValueError(f"base_delta module {path!r} ({type(module).__name__}) has no 2-D weight to merge into")
    return module


def _dense(module: torch.nn.Module, f: LoraFactors, path: str) -> torch.Tensor:
    """``s · B @ A`` in float32, laid out like the module's weight (transposed for GPT-2 ``Conv1D``)."""
    delta = f.scale * (f.B.to(torch.float32) @ f.A.to(torch.float32))
    if type(module).__name__ == "Conv1D":  # weight is [d_in, d_out]
        delta = delta.T
    if delta.shape != module.weight.shape:
        raise ValueError(f"base_delta for {path!r}: ΔW has shape {tuple(delta.shape)}, weight has {tuple(module.weight.shape)}")
    return delta.to(module.weight.device)


class BaseDelta:
    """Tracks which delta is merged into a model's base weights and restores the originals exactly.

    Usage: ``state.apply(delta, key)`` before training or evaluating; ``key`` identifies the delta
    (e.g. ``("version", 3)``); the same key is a no-op, another key restores then merges,
    ``apply(None, None)`` or ``restore()`` brings back the original weights bitwise.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._originals: dict[str, torch.Tensor] = {}
        self._key: Hashable | None = None

    @property
    def key(self) -> Hashable | None:
        """Key of the delta currently merged, ``None`` when the base weights are the originals."""
        return self._key

    @property
    def affected_modules(self) -> tuple[str, ...]:
        return tuple(sorted(self._originals))

    def apply(self, delta: Mapping[str, LoraFactors] | None, key: Hashable | None) -> None:
        """Make the base weights ``W0 + ΔW`` for ``delta`` (``W0`` for ``None``)."""
        if delta is None or not delta:
            self.restore()
            return
        if key is not None and key == self._key:
            return
        self.restore()
        with torch.no_grad():
            updates = {p: _dense(_base_linear(self.model, p), f, p) for p, f in delta.items()}
            for path, dW in updates.items():
                weight = _base_linear(self.model, path).weight
                self._originals[path] = weight.detach().clone()
                weight.copy_((weight.to(torch.float32) + dW).to(weight.dtype))
        self._key = key if key is not None else object()  # an anonymous delta never matches again

    def restore(self) -> None:
        """Copy the saved original weights back (bitwise) and forget them."""
        with torch.no_grad():
            for path, original in self._originals.items():
                _base_linear(self.model, path).weight.copy_(original)
        self._originals.clear()
        self._key = None

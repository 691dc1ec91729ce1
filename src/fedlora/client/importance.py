"""Importance of each LoRA module from a short local pass (Fed-pilot's module value, fedlora's version).

For module ``m`` with LoRA parameters ``θ_m = (A_m, B_m)`` and per-batch gradients ``g_{m,b}``
of the training loss over ``N`` batches of local data:

* ``"fisher"`` (default): trace of the empirical Fisher information of ``θ_m`` at batch level,
  ``(1/N) Σ_b ||g_{m,b}||²`` (Kirkpatrick et al. 2017's diagonal Fisher, summed over the module);
* ``"grad_norm"``: norm of the mean gradient, ``||(1/N) Σ_b g_{m,b}||``.

No weight changes: gradients come from ``torch.autograd.grad`` and ``.grad`` is never touched; the
``requires_grad`` flags are restored afterwards. At a fresh LoRA init (``B = 0``) only ``B`` has a
gradient, which is enough to rank modules. Memory: the pass back-propagates into every scored
module, so it needs what training all of them needs (``MemoryModel.peak_bytes`` without optimizer
states); keep its batches small or score a subset (``modules=``). The server's global score is
mixed in by ``fedlora.allocation.importance_mix.mix``.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from peft.tuners.lora import LoraLayer

__all__ = ["IMPORTANCE_METHODS", "lora_layers", "module_importance"]

IMPORTANCE_METHODS = ("fisher", "grad_norm")
_PREFIX = "base_model.model."


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    """Module path (the base model's, e.g. ``model.layers.0.self_attn.q_proj``) -> PEFT LoRA layer."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            out[name[len(_PREFIX) :] if name.startswith(_PREFIX) else name] = module
    return out


def _lora_params(layer: LoraLayer) -> list[torch.nn.Parameter]:
    params = []
    for adapter in layer.lora_A:
        params += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    return params


def module_importance(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    modules: Sequence[str] | None = None,
    method: str = "fisher",
    max_batches: int | None = None,
) -> dict[str, float]:
    """Importance score per LoRA module of ``model`` from a few batches.

    Args:
        model: a causal LM with PEFT LoRA layers on the modules to score (e.g. installed with
            ``fedlora.client.peft_bridge.installed``); its forward must return ``.loss``.
        batches: dicts with ``input_ids``, ``attention_mask``, ``labels`` on the model's device.
        modules: paths to score (default: every LoRA layer).
        method: ``"fisher"`` or ``"grad_norm"`` (module docstring).
        max_batches: stop after this many batches.

    Returns:
        module path -> score (>= 0), for every scored module.
    """
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"module_importance: method {method!r} is not known; use one of {IMPORTANCE_METHODS}")
    layers = lora_layers(model)
    names = sorted(layers) if modules is None else list(modules)
    missing = [m for m in names if m not in layers]
    if missing or not names:
        raise ValueError(f"module_importance: no LoRA layer on {missing[:3] or 'any module'}; install adapters on the modules to score first")
    params = {m: _lora_params(layers[m]) for m in names}
    flat = [p for m in names for p in params[m]]
    saved = {id(p): p.requires_grad for p in model.parameters()}
    sums = {m: [torch.zeros_like(p, dtype=torch.float64) for p in params[m]] for m in names}
    fisher = dict.fromkeys(names, 0.0)
    n = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                loss = model(**batch).loss
                grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
                for m in names:
                    for acc, p in zip(sums[m], params[m]):
                        g = next(grads)
                        g = torch.zeros_like(p) if g is None else g.detach()
                        acc += g.to(torch.float64)
                        fisher[m] += float(g.to(torch.float64).pow(2).sum())
                n += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
    if n == 0:
        raise ValueError("module_importance: no batch was given; pass at least one batch of local data")
    if method == "fisher":
        return {m: fisher[m] / n for m in names}
    return {m: float(torch.sqrt(sum((acc / n).pow(2).sum() for acc in sums[m]))) for m in names}

"""Builders: config sections -> the library objects a run needs (flat constructor arguments).

Each function reads one part of a :class:`fedlora.config.Config` and returns one component, so the
in-process engine, ``fedlora plan`` and the Flower apps build the same things the same way.
"""

from __future__ import annotations

import os
from typing import Any

from fedlora.config import Config, ModelSection
from fedlora.modelspec import ModelSpec
from fedlora.strategies.base import Strategy

__all__ = ["TINY_MODEL", "choose_threads", "load_base_model", "model_name_or_path", "model_local_source", "build_spec", "build_strategy", "build_train_config", "eval_kwargs"]

TINY_MODEL = "tiny"
"""``model.name`` of the random 2-layer Llama (``fedlora.testing.tiny_llama``), for tests and smoke runs."""


def choose_threads(requested: int) -> tuple[int, str]:
    """torch CPU threads for ``run.threads`` and why: the number asked, or with 0 the current count
    lowered to the cores that the 1-minute load average says are free (at least 1)."""
    import torch

    current = torch.get_num_threads()
    if requested > 0:
        return requested, "run.threads"
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return current, "torch default"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = max(1, int(cores - load + 0.5))
    if free >= current:
        return current, "torch default"
    return free, f"auto: load average {load:.1f} on {cores} cores"


def load_base_model(m: ModelSection) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``[model]``; ``"tiny"`` builds the random test model (seed 0, fp32, CPU), quantized
    through a saved copy when ``model.quantization`` asks for it."""
    from fedlora.models import load_model

    if m.name == TINY_MODEL:
        from fedlora.testing import tiny_llama

        if m.quantization == "none":
            return tiny_llama(seed=0)
        return load_model(_saved_tiny(), dtype="float32", device="cpu", quantization=m.quantization)
    return load_model(m.name, dtype=m.dtype, device=m.device, quantization=m.quantization)


def _saved_tiny() -> str:
    """The tiny test model saved once per process (a folder that transformers can load quantized)."""
    global _TINY_DIR
    if _TINY_DIR is None:
        import tempfile

        from fedlora.testing import tiny_llama

        model, tokenizer = tiny_llama(seed=0)
        _TINY_DIR = tempfile.mkdtemp(prefix="fedlora-tiny-")
        model.save_pretrained(_TINY_DIR)
        tokenizer.save_pretrained(_TINY_DIR)
    return _TINY_DIR


_TINY_DIR: str | None = None


def model_name_or_path(m: ModelSection) -> str:
    """What an exported adapter records as its base model: the hub id (a bundled model's upstream id, so the
    adapter loads anywhere; :func:`model_local_source` says where this machine read it)."""
    if m.name.startswith("bundled:"):
        from fedlora.models import BUNDLED_HUB_IDS

        return BUNDLED_HUB_IDS[m.name]
    return m.name


def model_local_source(m: ModelSection) -> str:
    """Where this machine loads ``[model]`` from: the cached folder of a bundled model, else its name."""
    if m.name.startswith("bundled:"):
        from fedlora.models import bundled_smollm2_path

        return str(bundled_smollm2_path())
    return m.name


def build_spec(model: Any, m: ModelSection) -> ModelSpec:
    """The model's LoRA-targetable shapes for ``model.target_modules``."""
    from fedlora.models import model_spec

    return model_spec(model, tuple(m.target_modules))


def spec_of_section(m: ModelSection) -> ModelSpec:
    """``[model]``'s LoRA-targetable shapes without loading its weights (from the model's configuration;
    ``"tiny"`` is built, it is small): what a server needs to plan and aggregate."""
    if m.name == TINY_MODEL:
        model, _ = load_base_model(m)
        return build_spec(model, m)
    from fedlora.models import spec_without_weights

    return spec_without_weights(m.name, tuple(m.target_modules), dtype=m.dtype)


def build_strategy(cfg: Config, spec: ModelSpec | None = None) -> Strategy:
    """``strategy.name`` with the run seed, the model shapes and the ``[strategy]`` arguments."""
    from fedlora.strategies.registry import make_strategy

    strategy = make_strategy(cfg.strategy.name, seed=cfg.run.seed, shapes=spec, **cfg.strategy.params)
    if cfg.privacy.clip_norm > 0:
        from fedlora.engine.sampling import clients_per_round
        from fedlora.strategies.dp import DPFedAvg

        population = cfg.data.num_clients
        strategy = DPFedAvg(strategy, clip_norm=cfg.privacy.clip_norm, noise_multiplier=cfg.privacy.noise_multiplier,
                            population=population, per_round=clients_per_round(cfg.clients.clients_per_round, population),
                            delta=cfg.privacy.delta, seed=cfg.run.seed)  # fmt: skip
    return strategy


def build_train_config(cfg: Config):
    """The :class:`fedlora.client.trainer.TrainConfig` of ``[train]`` (``grad_clip = 0`` disables clipping)."""
    from fedlora.client.trainer import TrainConfig

    t = cfg.train
    return TrainConfig(local_steps=t.local_steps, batch_size=t.batch_size, lr=t.lr, max_length=t.max_length,
                       weight_decay=t.weight_decay, grad_clip=t.grad_clip or None, optimizer=t.optimizer,
                       grad_checkpointing=t.grad_checkpointing, dropout=t.dropout, group_by_length=t.group_by_length)  # fmt: skip


def eval_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :func:`fedlora.eval.evaluate` from ``[eval]``."""
    e = cfg.eval
    return {"max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size, "max_length": e.max_length, "generate": e.generate}

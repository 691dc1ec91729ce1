"""The pieces of a local training step that the sequential trainer and the lockstep trainer share.

- :func:`batch_schedule`: which examples form each of a client's batches (seeded, cycling the data);
- :func:`make_optimizer`: the client's optimizer over its LoRA factors;
- :func:`training_mode`: the shared model in train mode (optionally with gradient checkpointing) for a block;
- :func:`seeded`: the global RNG (dropout) seeded for a block, the caller's state restored after.

``fedlora.client.trainer`` (one client after another) and ``fedlora.client.lockstep`` (a round's clients in
one batched pass) both import them from here, so neither imports the other's internals.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

__all__ = ["batch_schedule", "make_optimizer", "training_mode", "seeded"]


def batch_schedule(n: int, batch_size: int, steps: int, generator: torch.Generator,
                   lengths: Sequence[int] | None = None, window: int = 16) -> list[list[int]]:  # fmt: skip
    """Indices of ``steps`` batches of ``min(batch_size, n)``: consecutive slices of a stream of
    random permutations of ``range(n)`` (the data cycles, each epoch reshuffled).

    With ``lengths`` (tokens per example), each run of ``window`` batches of the stream is sorted by
    length before it is cut into batches, whose order is then shuffled (as transformers'
    ``group_by_length``): every example is still seen once per epoch, and a batch pads to a length
    close to its own examples'.
    """
    size = min(batch_size, n)
    stream: list[int] = []
    while len(stream) < size * steps:
        stream.extend(torch.randperm(n, generator=generator).tolist())
    stream = stream[: size * steps]
    if lengths is None:
        return [stream[i * size : (i + 1) * size] for i in range(steps)]
    batches: list[list[int]] = []
    for start in range(0, len(stream), size * window):
        chunk = sorted(stream[start : start + size * window], key=lambda i: (lengths[i], i))
        group = [chunk[i : i + size] for i in range(0, len(chunk), size)]
        order = torch.randperm(len(group), generator=generator).tolist()
        batches.extend(group[j] for j in order)
    return batches


def make_optimizer(cfg: Any, params) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (``adamw`` | ``sgd``) over ``params`` at ``cfg.lr`` and ``cfg.weight_decay`` (a ``TrainConfig``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@contextmanager
def training_mode(model: torch.nn.Module, grad_checkpointing: bool) -> Iterator[None]:
    """The model in train mode (and gradient checkpointing on) for the block; its previous mode after."""
    was_training = model.training
    model.train()
    new_api = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5 renamed it
    if grad_checkpointing and new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if grad_checkpointing:
            model.activation_checkpointing_disable() if new_api else model.gradient_checkpointing_disable()
        model.train(was_training)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (dropout) for the block, restoring the caller's RNG state after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

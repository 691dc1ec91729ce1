"""fedlora.flower: run any fedlora federation on Flower (flwr 1.41-1.42, Message API).

- :mod:`~fedlora.flower.strategy` / :mod:`~fedlora.flower.client_helpers`: ``FedLoraStrategy``, any
  fedlora method behind Flower's ``Strategy`` interface for your own ServerApp, and the helpers your
  ClientApp answers it with (``train_reply``, ``reply_from_factors``, ``evaluate_reply``);

- :mod:`~fedlora.flower.server_app` / :mod:`~fedlora.flower.client_app`: the ServerApp and
  ClientApp (``app`` objects) that ``fedlora flower app`` folders point Flower at;
- :mod:`~fedlora.flower.server`: the federation loop (resource query, per-client payloads,
  aggregation by a fedlora strategy, federated evaluation, checkpoints, fault handling);
- :mod:`~fedlora.flower.serialization`: fedlora objects <-> Flower records;
- :mod:`~fedlora.flower.from_config`: recipes from a fedlora config (the engine's own builders);
- :mod:`~fedlora.flower.deploy`, :mod:`~fedlora.flower.certs`, :mod:`~fedlora.flower.cli`:
  SuperLink/SuperNodes on loopback, TLS certificates and node keys, ``fedlora flower ...``.

Names are imported lazily, so ``import fedlora.flower`` (and ``fedlora flower --help``) works
without Flower installed; using them needs ``pip install 'fedlora[flower]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FlowerServer", "FlowerOptions", "ServerRecipe", "NodeRecipe", "NodeData", "LocalFederation",
    "write_app", "write_credentials", "recipes_from_fedlora_config", "MalformedMessageError",
    "FedLoraStrategy", "read_train", "train_reply", "reply_from_factors", "evaluate_reply",
]  # fmt: skip

_LOCATIONS = {
    "FlowerServer": "fedlora.flower.server", "FlowerOptions": "fedlora.flower.options", "ServerRecipe": "fedlora.flower.recipe",
    "NodeRecipe": "fedlora.flower.recipe", "NodeData": "fedlora.flower.recipe",
    "LocalFederation": "fedlora.flower.deploy", "write_app": "fedlora.flower.app_dir",
    "write_credentials": "fedlora.flower.certs", "recipes_from_fedlora_config": "fedlora.flower.from_config",
    "MalformedMessageError": "fedlora.flower.serialization", "FedLoraStrategy": "fedlora.flower.strategy",
    "read_train": "fedlora.flower.client_helpers", "train_reply": "fedlora.flower.client_helpers",
    "reply_from_factors": "fedlora.flower.client_helpers", "evaluate_reply": "fedlora.flower.client_helpers",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'fedlora.flower' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOCATIONS[name]), name)
    globals()[name] = value
    return value

"""Fed-pilot's local module importance of one simulated client, on the shared base model.

A fresh LoRA (``clients.fedpilot_rank``, seeded per module) is installed on every targeted module,
``clients.importance_steps`` batches of the client's data (a seeded shuffle) are scored with
:func:`fedlora.client.importance.module_importance` (empirical Fisher), and the layers are removed.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from fedlora.allocation.plan import ClientPlan
from fedlora.config import Config
from fedlora.engine.sampling import derive_seed
from fedlora.modelspec import ModelSpec

__all__ = ["client_importance"]


def _batches(tokenizer: Any, examples: Sequence, cfg: Config, client_id: str, device) -> list[dict]:
    from fedlora.data.formatting import IGNORE_INDEX, collate, encode_example

    order = list(range(len(examples)))
    random.Random(derive_seed(cfg.run.seed, "importance", client_id)).shuffle(order)
    size, steps = cfg.train.batch_size, cfg.clients.importance_steps
    encoded = [encode_example(tokenizer, examples[i], cfg.train.max_length) for i in order[: size * steps]]
    encoded = [e for e in encoded if any(t != IGNORE_INDEX for t in e["labels"])]
    if not encoded:
        raise ValueError(f"client {client_id!r}: no example keeps an answer token within train.max_length; raise it")
    return [{k: v.to(device) for k, v in collate(encoded[i : i + size], tokenizer.pad_token_id).items()}
            for i in range(0, len(encoded), size)]  # fmt: skip


def client_importance(model: Any, tokenizer: Any, examples: Sequence, cfg: Config, spec: ModelSpec, client_id: str) -> dict[str, float]:
    """Module path -> importance score (>= 0) of ``client_id`` on its ``examples``."""
    from fedlora.client.importance import module_importance
    from fedlora.client.peft_bridge import installed
    from fedlora.lora.linalg import init_lora_factors

    rank, ratio = cfg.clients.fedpilot_rank, cfg.clients.alpha_ratio
    modules = [m for m in spec.modules if m.kind in set(cfg.model.target_modules)]
    plan = ClientPlan(client_id, {m.name: min(rank, m.d_in, m.d_out) for m in modules},
                      {m.name: ratio * min(rank, m.d_in, m.d_out) for m in modules})  # fmt: skip
    seed = derive_seed(cfg.run.seed, "importance-init")
    factors = {m.name: init_lora_factors(m.d_out, m.d_in, plan.ranks[m.name], plan.alphas[m.name], seed, m.name) for m in modules}
    device = next(model.parameters()).device
    batches = _batches(tokenizer, examples, cfg, client_id, device)
    was_training = model.training
    model.eval()
    try:
        with installed(model, plan, factors):
            return module_importance(model, batches, modules=sorted(plan.ranks))
    finally:
        model.train(was_training)

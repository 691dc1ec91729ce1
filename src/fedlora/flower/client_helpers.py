"""What a Flower user's own ClientApp needs to answer a :class:`~fedlora.flower.strategy.FedLoraStrategy`.

With fedlora's trainer (the base model stays loaded across messages; one LoRA per payload)::

    trainer = LocalTrainer(model, tokenizer, TrainConfig(local_steps=10, lr=5e-4))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, trainer, my_examples)

With your own training loop: ``task = read_train(msg)`` gives the plan (per-module rank and alpha) and the
starting factors ``task.payload.init``; train them and answer ``reply_from_factors(msg, factors, n)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from flwr.app import Message, MetricRecord

from fedlora.flower import serialization as S
from fedlora.lora.factors import Adapter, Update

__all__ = ["read_train", "train_reply", "reply_from_factors", "evaluate_reply"]


def read_train(msg: Message) -> S.TrainInstruction:
    """The payload (plan, starting factors, options), the round and this client's seed of a train message."""
    return S.content_to_payload(msg.content)


def reply_from_factors(msg: Message, factors: Adapter, num_examples: int, metrics: Mapping[str, float] | None = None) -> Message:
    """The reply carrying trained factors (``{module: LoraFactors(A, B, alpha)}`` at the plan's ranks)."""
    update = Update("reply", dict(factors), int(num_examples), dict(metrics or {}))  # the server names the sender itself
    return Message(S.update_to_content(update), reply_to=msg)


def train_reply(msg: Message, trainer: Any, examples: Sequence[Any]) -> Message:
    """Train with fedlora's :class:`~fedlora.client.trainer.LocalTrainer` on ``examples``; the reply to send."""
    task = read_train(msg)
    update = trainer.train(task.payload, examples, client_seed=task.client_seed)
    return Message(S.update_to_content(update), reply_to=msg)


def evaluate_reply(msg: Message, trainer: Any, examples: Sequence[Any], **eval_kwargs: Any) -> Message:
    """Evaluate the global adapter of an evaluate message on ``examples`` (:func:`fedlora.eval.evaluate`)."""
    from fedlora.eval import evaluate

    task = S.content_to_global(msg.content)
    with trainer.use_adapter(task.adapter or None) as model:
        metrics = evaluate(model, trainer.tokenizer, list(examples), **eval_kwargs)
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    return Message(S.RecordDict({S.METRICS: MetricRecord(numbers | {"n_examples": float(len(examples))})}), reply_to=msg)

"""ClientApp: the node's IID share of the challenge's dataset, trained by fedlora at the rank the server's plan gives it."""

from __future__ import annotations

import dataclasses
import random
from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedlora.client.trainer import LocalTrainer
from fedlora.data import load_hf_dataset
from fedlora.engine.build import load_base_model
from fedlora.flower import read_train, train_reply

from .settings import Settings, read_settings

app = ClientApp()


_TRAINERS: dict[str, LocalTrainer] = {}


def _trainer(s: Settings) -> LocalTrainer:
    """One (quantized) base model per ClientApp process; the LoRA factors come with each message."""
    key = repr(s.model)
    if key not in _TRAINERS:
        _TRAINERS.clear()
        base, tokenizer = load_base_model(s.model)
        _TRAINERS[key] = LocalTrainer(base, tokenizer, s.train)
    return _TRAINERS[key]


@lru_cache(maxsize=1)
def _partition(dataset: str, partition: int, partitions: int) -> list:
    """The node's IID share: the examples shuffled once (seed 42), cut into ``partitions`` equal parts."""
    examples = load_hf_dataset(dataset, "train", task_name="generalnlp")
    order = list(range(len(examples)))
    random.Random(42).shuffle(order)
    return [examples[i] for i in order[partition::partitions]]


@app.train()
def train(msg: Message, context: Context) -> Message:
    s = read_settings(context.run_config)
    trainer = _trainer(s)
    trainer.config = dataclasses.replace(s.train, lr=s.lr_at(read_train(msg).server_round))
    node = context.node_config
    return train_reply(msg, trainer, _partition(s.dataset, int(node["partition-id"]), int(node["num-partitions"])))

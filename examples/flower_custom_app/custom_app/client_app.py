"""The user's ClientApp: its own model and data, trained with fedlora's helper for each payload."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.config import ModelSection
from fedlora.data import load_bundled_benchmark
from fedlora.engine.build import load_base_model
from fedlora.flower import train_reply

app = ClientApp()


@lru_cache(maxsize=1)
def _trainer(model: str, steps: int, lr: float) -> LocalTrainer:
    """One base model per ClientApp process, kept across messages; LoRA comes with each payload."""
    base, tokenizer = load_base_model(ModelSection(name=model))
    return LocalTrainer(base, tokenizer, TrainConfig(local_steps=steps, batch_size=4, lr=lr, max_length=96))


@lru_cache(maxsize=4)
def _examples(tasks: str, partition: int) -> list:
    names = tasks.split(",")
    bench = load_bundled_benchmark(tasks=names, heldout_tasks=(), max_train_per_task=48)
    mine = names[partition % len(names)]
    return [ex for ex in bench.train if ex.task == mine]


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, node = context.run_config, context.node_config
    trainer = _trainer(str(cfg["model"]), int(cfg["local-steps"]), float(cfg["lr"]))
    return train_reply(msg, trainer, _examples(str(cfg["tasks"]), int(node["partition-id"])))

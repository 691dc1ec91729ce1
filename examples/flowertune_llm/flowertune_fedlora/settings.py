"""The FlowerTune run config (``[tool.flwr.app.config]``) read once, as fedlora's pieces need it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from fedlora.client.trainer import TrainConfig
from fedlora.config import ModelSection

QUANTIZATION = {0: "none", 4: "nf4", 8: "int8"}
CHALLENGE_SUPERNODES = 20
"""SuperNodes of the GeneralNLP challenge (FlowerTune template: ``options.num-supernodes = 20``)."""


@dataclass(frozen=True)
class Settings:
    model: ModelSection
    rank_levels: tuple[int, ...]
    alpha_ratio: float
    method: str
    rounds: int
    fraction_fit: float
    save_every: int
    results_dir: str
    dataset: str
    lr_max: float
    lr_min: float
    train: TrainConfig

    def rank_of_partition(self, partition: int) -> int:
        return self.rank_levels[partition % len(self.rank_levels)]

    def lr_at(self, server_round: int) -> float:
        """Cosine annealing from ``lr_max`` (round 1) to ``lr_min`` (last round), as FlowerTune's template."""
        progress = (server_round - 1) / max(1, self.rounds - 1)
        return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(math.pi * progress))


def read_settings(run_config: Mapping[str, Any]) -> Settings:
    """Settings from the flattened run config; a bad value names its key."""
    c = dict(run_config)
    bits = int(c["model.quantization"])
    if bits not in QUANTIZATION:
        raise ValueError(f"model.quantization = {bits}: use 4 (NF4), 8 (int8) or 0 (full precision)")
    levels = tuple(sorted({int(r) for r in str(c["fedlora.rank-levels"]).split(",")}))
    rank = int(c["model.lora.peft-lora-r"])
    if max(levels) != rank:
        raise ValueError(f"fedlora.rank-levels = {c['fedlora.rank-levels']!r}: its largest level must be model.lora.peft-lora-r = {rank}")
    name = str(c["model.name"])
    model = ModelSection(name=name, quantization=QUANTIZATION[bits], dtype="float32" if name == "tiny" else "auto")
    train = TrainConfig(local_steps=int(c["train.training-arguments.max-steps"]),
                        batch_size=int(c["train.training-arguments.per-device-train-batch-size"]),
                        lr=float(c["train.learning-rate-max"]), max_length=int(c["train.seq-length"]),
                        grad_checkpointing=bool(c["model.gradient-checkpointing"]))  # fmt: skip
    return Settings(model, levels, float(c["model.lora.peft-lora-alpha"]) / rank, str(c["fedlora.method"]),
                    int(c["num-server-rounds"]), float(c["strategy.fraction-fit"]), int(c["train.save-every-round"]),
                    str(c["fedlora.results-dir"]), str(c["static.dataset.name"]), float(c["train.learning-rate-max"]),
                    float(c["train.learning-rate-min"]), train)  # fmt: skip

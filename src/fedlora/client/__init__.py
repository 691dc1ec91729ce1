"""fedlora.client: the local trainer on a shared base model, and the bridge to PEFT."""

from fedlora.client.base_delta import BaseDelta
from fedlora.client.layer_pool import LoraLayerPool
from fedlora.client.peft_bridge import (
    AdapterKeyError,
    adapter_to_peft_state,
    install_adapter,
    load_peft_adapter,
    lora_config_for,
    peft_state_to_adapter,
    plan_of_adapter,
    remove_adapter,
    save_peft_adapter,
)
from fedlora.client.trainer import LocalTrainer, TrainConfig

__all__ = [
    "LocalTrainer",
    "TrainConfig",
    "BaseDelta",
    "LoraLayerPool",
    "AdapterKeyError",
    "lora_config_for",
    "adapter_to_peft_state",
    "peft_state_to_adapter",
    "save_peft_adapter",
    "load_peft_adapter",
    "plan_of_adapter",
    "install_adapter",
    "remove_adapter",
]

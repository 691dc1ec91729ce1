"""Pure LoRA tensor math: factors, updates, linear algebra, validation. Imports torch only."""

from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import (
    extend_rank,
    factor_gram_norm,
    init_lora_factors,
    lora_delta,
    module_seed,
    pad_rank,
    rescale_alpha,
    svd_of_weighted_sum,
    svd_to_factors,
    truncate_rank,
    weighted_delta,
)
from fedlora.lora.validation import InvalidUpdateError, validate_update

__all__ = [
    "Adapter",
    "LoraFactors",
    "Update",
    "extend_rank",
    "factor_gram_norm",
    "init_lora_factors",
    "lora_delta",
    "module_seed",
    "pad_rank",
    "rescale_alpha",
    "svd_of_weighted_sum",
    "svd_to_factors",
    "truncate_rank",
    "weighted_delta",
    "InvalidUpdateError",
    "validate_update",
]

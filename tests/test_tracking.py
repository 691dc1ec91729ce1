"""Experiment tracking: a run with ``run.log_to = ["tensorboard"]`` writes event files that TensorBoard's own reader
loads with every numeric metric of ``metrics.jsonl``; a tracker that is not installed is refused before the run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fedlora.config import parse_config
from fedlora.engine.run import Engine, RunError
from fedlora.engine.tracking import scalars_of

RAW = {
    "run": {"rounds": 2, "seed": 1},
    "model": {"name": "tiny"},
    "data": {"tasks": ["rt_sentiment", "bbc_headline", "word_sentiment"], "heldout_tasks": ["word_sentiment"], "num_clients": 2,
             "max_train_per_task": 8, "max_eval_per_task": 4},
    "clients": {"ranks": [2, 4]},
    "train": {"local_steps": 2, "batch_size": 2, "max_length": 48},
    "eval": {"generate": False, "max_length": 48},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is an optional extra")
def test_tensorboard_events_hold_every_metric_of_the_metrics_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = Engine(parse_config({**RAW, "run": {**RAW["run"], "log_to": ["tensorboard"]}}), tmp_path / "run").run()
    acc = EventAccumulator(str(tmp_path / "run" / "tracking" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [(tag, step, value) for r in records for step, scalars in [scalars_of(r)] for tag, value in scalars.items()]
    assert len(expected) > 50 and {r["type"] for r in records} >= {"round", "client", "eval"}
    for tag, step, value in expected:
        assert logged[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-6), tag
    assert "heldout/accuracy" in logged and "round/train_loss" in logged and result.completed_rounds == 2
    assert "config" in acc.Tags()["tensors"] or acc.Tags().get("tensors")  # the config as text


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RunError, match="wandb is not installed: pip install wandb"):
        Engine(parse_config({**RAW, "run": {**RAW["run"], "log_to": ["wandb"]}}), tmp_path / "run").run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

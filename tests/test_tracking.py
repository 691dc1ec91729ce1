"""Experiment tracking: a run with ``run.log_to = ["tensorboard"]`` writes event files that TensorBoard's own reader
loads with every numeric metric of ``metrics.jsonl``; a tracker that is not installed is refused before the run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from fedlora.engine.run import Engine, RunError
from fedlora.engine.tracking import scalars_of

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is an optional extra")
def test_tensorboard_events_hold_every_metric_of_the_metrics_log(tmp_path, tiny_run_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = Engine(tiny_run_config(run={"log_to": ["tensorboard"]}), tmp_path / "run").run()
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


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(tmp_path, monkeypatch, tiny_run_config):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RunError, match="wandb is not installed: pip install wandb"):
        Engine(tiny_run_config(run={"log_to": ["wandb"]}), tmp_path / "run").run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

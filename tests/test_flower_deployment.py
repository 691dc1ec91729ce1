"""A real Flower Deployment Engine run on loopback: one SuperLink and SuperNodes started by the
test with TLS and SuperNode authentication, 2 rounds of FlexLoRA on a tiny model; an
unregistered SuperNode is refused; a SuperNode killed mid-run does not stop the run.

Every process is started by the test in its own process group and stopped by it; every wait
has a deadline. Takes 2-5 minutes on 2 cores (Flower starts a process per message). A second run without
faults reaches the in-process engine's adapter.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("flwr")

from fedlora.flower.app_dir import write_app  # noqa: E402
from fedlora.flower.deploy import LocalFederation  # noqa: E402

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 45


CONFIG = """
[run]
name = "flower-deployment-test"
rounds = 2
eval_every = 0
[model]
name = "tiny"
target_modules = ["q_proj", "v_proj"]
[data]
tasks = ["rt_sentiment", "headline_source", "word_sentiment"]
heldout_tasks = ["word_sentiment"]
num_clients = 2
max_train_per_task = 6
max_eval_per_task = 2
[clients]
ranks = [2, 8]
[strategy]
name = "flexlora"
[train]
local_steps = 2
batch_size = 2
lr = 3e-3
max_length = 48
[eval]
max_length = 48
generate = false
heldout = false
"""


def _app(tmp_path):
    options = {"round-timeout": ROUND_TIMEOUT, "query-timeout": 90, "node-wait-timeout": 60, "max-missed-rounds": 1, "out-dir": str(tmp_path / "results")}
    return write_app(CONFIG, tmp_path / "app", name="fedlora-deployment-test", options=options)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_secure_federation_survives_a_killed_supernode(tmp_path):
    app = _app(tmp_path)
    metrics = tmp_path / "results" / "metrics.jsonl"
    with LocalFederation(tmp_path / "fed", secure=True) as fed:
        fed.start_superlink()
        for k in range(2):
            fed.start_supernode(k, {"partition-id": k, "num-partitions": 2})
        # An unregistered SuperNode is refused by the SuperLink and exits.
        rogue = fed.start_supernode(9, {"partition-id": 1, "num-partitions": 2}, private_key=fed.new_node_key("rogue"))
        assert rogue.popen.wait(timeout=90) != 0
        assert "Failed to activate SuperNode" in rogue.log.read_text()
        run = fed.start_app(app)
        _wait_for(lambda: any(r["type"] == "round" for r in _rows(metrics)), 300, "round 1")
        fed.kill_supernode(1)  # crash during round 2
        out = fed.wait_app(run, timeout=240)
    rows = _rows(metrics)
    first, second = [r for r in rows if r["type"] == "round"]
    assert first["accepted"] == 2 and first["clients"] == ["client_000", "client_001"]
    assert second["accepted"] == 1 and "client_001" in {**second["timed_out"], **second["failed"]}
    assert second["dropped"] == ["client_001"]
    evals = {r["round"]: r for r in rows if r["type"] == "eval"}
    assert evals[0]["nodes"] == 2 and evals[2]["nodes"] == 1 and evals[0]["n_examples"] == evals[2]["n_examples"] == 4
    ranks = {r["client"]: r["rank"] for r in rows if r["type"] == "client"}
    assert ranks == {"client_000": 2, "client_001": 8}
    assert (tmp_path / "results" / "adapter" / "adapter_model.safetensors").exists()
    assert "done: results in" in out
    # TLS was on: the SuperLink served HTTPS.
    assert "https://127.0.0.1" in (tmp_path / "fed" / "logs" / "superlink.log").read_text()


def test_deployment_reaches_the_in_process_engines_adapter(tmp_path):
    import tomllib

    import torch

    from fedlora.config import parse_config
    from fedlora.engine.checkpoint import load_checkpoint
    from fedlora.engine.run import Engine
    from fedlora.strategies.registry import make_strategy

    engine = Engine(parse_config(tomllib.loads(CONFIG)), tmp_path / "engine").run()
    app = _app(tmp_path)
    with LocalFederation(tmp_path / "fed", secure=False) as fed:
        fed.start_superlink()
        for k in range(2):
            fed.start_supernode(k, {"partition-id": k, "num-partitions": 2})
        fed.run_app(app, timeout=300)
    strategy = make_strategy("flexlora")
    strategy.load_state_dict(load_checkpoint(tmp_path / "results")["strategy"])
    got, want = strategy.global_adapter(), engine.strategy.global_adapter()
    assert set(got) == set(want) and got
    for m in want:  # separate processes may differ only by float rounding of their thread counts
        torch.testing.assert_close(got[m].delta(), want[m].delta(), rtol=1e-5, atol=1e-7)

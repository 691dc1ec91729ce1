"""fedlora methods inside a user's own Flower app: FedLoraStrategy and the client helpers.

The example app under examples/flower_custom_app (the user's own ServerApp and ClientApp) runs two
rounds on in-process nodes with the tiny model; a malformed reply is rejected and the round goes on.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402

from fedlora.flower.local_grid import run_in_process  # noqa: E402
from fedlora.flower.strategy import FedLoraStrategy, node_client_id  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_custom_app"


@pytest.fixture()
def custom_app(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in [m for m in sys.modules if m.startswith("custom_app")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("custom_app.server_app"), importlib.import_module("custom_app.client_app")


def _run_config(tmp_path, **over):
    import tomllib

    cfg = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {**cfg, "model": "tiny", "num-server-rounds": 2, "local-steps": 2, "lr": 0.01, "out-dir": str(tmp_path / "out"), **over}


def test_a_users_own_flower_app_runs_flexlora_with_heterogeneous_ranks(custom_app, tmp_path):
    server, client = custom_app
    nodes = [{"partition-id": k, "num-partitions": 3} for k in range(3)]
    run_in_process(server.app, client.app, nodes, _run_config(tmp_path, ranks="2,4,8"))
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [len(r["accepted"]) for r in history["rounds"]] == [3, 3] and all(not r["rejected"] for r in history["rounds"])
    assert set(history["train"]) == {"1", "2"} and all(m["train_loss"] > 0 for m in history["train"].values())
    adapter_config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] >= 2  # a PEFT adapter came out


class _Grid:
    """Only what configure_train needs: the connected nodes."""

    def get_node_ids(self):
        return [11, 12]


def test_configure_sends_each_node_its_own_rank_and_a_malformed_reply_is_rejected():
    from fedlora.flower import serialization as S
    from fedlora.lora.factors import LoraFactors, Update

    module = "model.layers.0.self_attn.q_proj"
    strategy = FedLoraStrategy("flexlora", modules=[module], ranks={11: 2, 12: 4})
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid()))
    plans = {m.metadata.dst_node_id: S.content_to_payload(m.content).payload.plan for m in messages}
    assert {n: p.ranks[module] for n, p in plans.items()} == {11: 2, 12: 4}

    def reply_from(node: int, content: RecordDict) -> Message:
        msg = Message(content, dst_node_id=0, message_type="train")
        msg.metadata.__dict__["_src_node_id"] = node  # as Flower stamps the sender
        return msg

    good = Update("x", {module: LoraFactors(torch.randn(2, 64), torch.randn(64, 2), 4.0)}, 5, {"train_loss": 1.0})
    bad = RecordDict({"junk": ConfigRecord({"a": 1})})
    arrays, metrics = strategy.aggregate_train(1, [reply_from(11, S.update_to_content(good)), reply_from(12, bad)])
    assert metrics["accepted"] == 1.0 and metrics["rejected"] == 1.0
    assert "malformed reply" in strategy.history[-1]["rejected"][node_client_id(12)]
    assert strategy.global_adapter()[module].rank >= 1 and len(arrays) == 2

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

from flower_local_grid import claim_server_identity, run_in_process  # noqa: E402
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
    claim_server_identity()  # as the ServerApp runtime does before the strategy runs
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
    # communication: the factors' bytes both ways (fp32: 4 bytes per entry and a .npy header of at most 128
    # bytes per array, as Flower's numpy Array carries them; FlexLoRA sends no factors in round 1)
    received = strategy.history[-1]["bytes_received"]
    assert received == metrics["bytes_received"] and 4 * 2 * (64 + 64) < received <= 4 * 2 * (64 + 64) + 2 * 128
    assert strategy.history[-1]["bytes_sent"] == 0
    second = list(strategy.configure_train(2, arrays, ConfigRecord(), _Grid()))
    entries = sum(f.rank * (64 + 64) for f in (S.content_to_payload(m.content).payload.init[module] for m in second))
    strategy.aggregate_train(2, [])  # no reply came back: the round is recorded with what was sent
    assert 4 * entries < strategy.history[-1]["bytes_sent"] <= 4 * entries + 2 * len(second) * 128


# ----------------------------------------------------------------------------- Flower's wrappers never drop a guarantee


def _wrappers():
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideAdaptiveClipping,
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    return {
        "server-fixed": lambda s: DifferentialPrivacyServerSideFixedClipping(s, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2),
        "client-fixed": lambda s: DifferentialPrivacyClientSideFixedClipping(s, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2),
        "server-adaptive": lambda s: DifferentialPrivacyServerSideAdaptiveClipping(s, noise_multiplier=1.0, num_sampled_clients=2, clipped_count_stddev=1.0),
        "client-adaptive": lambda s: DifferentialPrivacyClientSideAdaptiveClipping(s, noise_multiplier=1.0, num_sampled_clients=2, clipped_count_stddev=1.0),
    }  # fmt: skip


class _NoSendGrid(_Grid):
    """A grid that fails the test if anything is sent: a refusal must come before round 1's messages."""

    def send_and_receive(self, *args, **kwargs):
        raise AssertionError("a message was sent before the wrapper was refused")


@pytest.mark.parametrize("kind", ["server-fixed", "client-fixed", "server-adaptive", "client-adaptive"])
def test_each_flower_dp_wrapper_is_refused_before_round_one(kind):
    from fedlora.flower.strategy import ComposedStrategyError

    inner = FedLoraStrategy("flexlora", modules=["model.layers.0.self_attn.q_proj"], ranks=2)
    wrapped = _wrappers()[kind](inner)
    with pytest.raises(ComposedStrategyError, match=r"wraps FedLoraStrategy.*DPFedAvg.*norm_bound"):
        wrapped.start(_NoSendGrid(), initial_arrays=ArrayRecord(), num_rounds=1)
    assert inner.history == []  # nothing trained, nothing aggregated


def test_arrays_changed_between_rounds_are_refused_and_unchanged_ones_pass():
    import numpy as np
    from flwr.app import Array

    from fedlora.flower.strategy import ComposedStrategyError

    module = "model.layers.0.self_attn.q_proj"
    strategy = FedLoraStrategy("fedit", modules=[module], ranks=2)
    strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid())
    arrays, _ = strategy.aggregate_train(1, [])  # no reply: the global adapter is unchanged, and a warning says so
    assert list(strategy.configure_train(2, arrays, ConfigRecord(), _Grid()))  # handed back as returned: fine
    noised = ArrayRecord({k: Array(np.asarray(arrays[k].numpy()) + 0.1) for k in arrays.keys()}) if len(arrays) else ArrayRecord({"x": Array(np.zeros(1))})
    with pytest.raises(ComposedStrategyError, match="other arrays"):
        strategy.configure_train(3, noised, ConfigRecord(), _Grid())


def test_a_round_without_an_accepted_update_warns(caplog):
    strategy = FedLoraStrategy("fedit", modules=["model.layers.0.self_attn.q_proj"], ranks=2)
    with caplog.at_level("WARNING", logger="fedlora.flower.strategy"):
        strategy.aggregate_train(1, [])
    assert "round 1 aggregated no update" in caplog.text

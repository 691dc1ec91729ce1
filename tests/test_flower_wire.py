"""fedlora on Flower, the transport layer: records round trip exactly, malformed content is refused
with a reason, the exchange sorts replies / errors / silence per node, settings are validated."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedlora.allocation.plan import ClientPlan  # noqa: E402
from fedlora.flower import serialization as S  # noqa: E402
from flower_local_grid import LocalGrid, wire_roundtrip  # noqa: E402
from fedlora.flower.messaging import exchange  # noqa: E402
from fedlora.flower.options import FlowerOptions, FlowerOptionsError  # noqa: E402
from fedlora.lora.factors import LoraFactors, Update  # noqa: E402
from fedlora.strategies.base import Payload  # noqa: E402

Q, V = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"


def _adapter(dtype=torch.float32) -> dict[str, LoraFactors]:
    g = torch.Generator().manual_seed(0)
    return {
        Q: LoraFactors(torch.randn(2, 8, generator=g).to(dtype), torch.randn(6, 2, generator=g).to(dtype), 4.0),
        V: LoraFactors(torch.randn(3, 8, generator=g).to(dtype), torch.randn(6, 3, generator=g).to(dtype), 6.0),
    }


def _same(a: dict[str, LoraFactors], b: dict[str, LoraFactors]) -> bool:
    return set(a) == set(b) and all(
        a[m].alpha == b[m].alpha and a[m].A.dtype == b[m].A.dtype and torch.equal(a[m].A, b[m].A) and torch.equal(a[m].B, b[m].B) for m in a
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_payload_roundtrip_is_exact_through_the_wire(dtype):
    # Prepare
    plan = ClientPlan("client-1", {Q: 2, V: 3}, {Q: 4.0, V: 6.0}, trainable=frozenset({Q}))
    payload = Payload(plan, init=_adapter(dtype), seed=7, train_A=False, base_delta=_adapter(dtype), base_delta_version=3, options={"hetlora_gamma": 0.99})
    # Execute
    got = S.content_to_payload(wire_roundtrip(S.payload_to_content(payload, server_round=5, client_seed=99)))
    # Assert
    back = got.payload
    assert got.server_round == 5 and got.client_seed == 99 and back.plan == plan and back.seed == 7 and back.train_A is False and back.train_B is True
    assert back.base_delta_version == 3 and back.options == {"hetlora_gamma": 0.99}
    assert _same(back.init, payload.init) and _same(back.base_delta, payload.base_delta)


def test_payload_without_init_or_base_delta():
    plan = ClientPlan.uniform("c", [Q], 2, 4.0)
    back = S.content_to_payload(S.payload_to_content(Payload(plan), server_round=1)).payload
    assert back.init == {} and back.base_delta is None


def test_update_roundtrip_names_the_client_from_the_server():
    update = Update("whatever-the-node-claims", _adapter(), 17, {"train_loss": 1.25, "steps": 3})
    back = S.content_to_update(wire_roundtrip(S.update_to_content(update)), "client-2")
    assert back.client_id == "client-2" and back.num_examples == 17
    assert back.metrics == {"train_loss": 1.25, "steps": 3.0} and _same(back.factors, update.factors)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda c: c.pop(S.UPDATE), "missing array record"),
        (lambda c: c.pop(f"{S.UPDATE}.meta"), "missing config record"),
        (lambda c: c[f"{S.UPDATE}.meta"].__setitem__("alphas", "{not json"), "not valid JSON"),
        (lambda c: c[f"{S.UPDATE}.meta"].__setitem__("num_examples", "12"), "expected an int"),
        (lambda c: c[S.UPDATE].pop(f"{Q}/B"), "do not pair up"),
        (lambda c: c[S.UPDATE].__setitem__(f"{Q}/A", S.tensor_to_array(torch.ones(2, 8, dtype=torch.int64))), "dtype 'int64'"),
    ],
)
def test_malformed_reply_raises_with_reason(corrupt, reason):
    content = S.update_to_content(Update("c", _adapter(), 5))
    corrupt(content)
    with pytest.raises(S.MalformedMessageError, match=reason):
        S.content_to_update(content, "c")


def test_truncated_raw_bfloat16_array_is_refused():
    arr = S.tensor_to_array(torch.ones(2, 3, dtype=torch.bfloat16))
    from flwr.app import Array

    bad = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data[:-2])
    with pytest.raises(S.MalformedMessageError, match="cannot decode"):
        S.array_to_tensor(bad, "x")


def _echo_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk full on node 1")
        record = ConfigRecord({"pid": context.node_config["partition-id"], "x": msg.content["c"]["x"]})
        return Message(RecordDict({"r": record}), reply_to=msg)

    return app


def test_exchange_sorts_replies_errors_and_silence():
    # Prepare: node 0 answers, node 1 raises, node 2 is silent, node 3 left
    grid = LocalGrid(_echo_app(), [{"partition-id": i} for i in range(4)])
    nodes = sorted(grid.get_node_ids())
    grid.silence(nodes[2])
    contents = {n: RecordDict({"c": ConfigRecord({"x": n})}) for n in nodes}
    grid.depart(nodes[3])
    # Execute
    out = exchange(grid, contents, message_type="train", group_id="1", timeout=0.5, poll_interval=0.05)
    # Assert
    assert set(out.replies) == {nodes[0]} and out.replies[nodes[0]].content["r"]["x"] == nodes[0]
    assert "disk full on node 1" in out.errors[nodes[1]]
    assert out.missing[nodes[2]].startswith("no reply within") and nodes[3] in out.errors


def test_wire_roundtrip_keeps_arrays():
    content = RecordDict({"a": ArrayRecord({"w": S.tensor_to_array(torch.arange(6.0).reshape(2, 3))})})
    back = wire_roundtrip(content)
    assert torch.equal(S.array_to_tensor(back["a"]["w"], "w"), torch.arange(6.0).reshape(2, 3))


def test_options_from_run_config_collects_every_error():
    assert FlowerOptions.from_run_config({"round-timeout": 30, "min-replies": 2, "fedlora-config": "x"}).round_timeout == 30.0
    with pytest.raises(FlowerOptionsError) as err:
        FlowerOptions.from_run_config({"round-timeout": -1, "min-replies": "2", "max-missed-rounds": 0})
    text = str(err.value)
    assert "round-timeout" in text and "min-replies" in text and "max-missed-rounds" in text
    assert FlowerOptions.from_run_config(FlowerOptions().to_run_config()) == FlowerOptions()


def test_merged_evaluation_shards_equal_the_evaluation_of_their_union():
    import pytest

    from fedlora.data.example import Example
    from fedlora.eval import evaluate
    from fedlora.flower.records import merge_eval
    from fedlora.testing import tiny_llama

    model, tok = tiny_llama()
    cls = [Example("Is it good?", f"text {i}", "yes" if i % 3 else "no", "cls", ("yes", "no")) for i in range(7)]
    gen = [Example("Repeat.", f"word {i}", f"word {i}", "gen") for i in range(5)]
    examples = cls + gen
    whole = evaluate(model, tok, examples, generate=False)
    shards = [evaluate(model, tok, part, generate=False) for part in (examples[:4] + gen[:2], cls[4:] + gen[2:])]
    merged = merge_eval(shards)
    for key in ("accuracy", "accuracy_se", "rougeL_tf", "rougeL_tf_se", "loss", "n_cls", "n_gen", "n_examples",
                "task/cls/accuracy", "task/cls/accuracy_se"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
    assert merged["loss_se"] == pytest.approx(whole["loss_se"], rel=0.5)  # a ratio's SE: pooled approximately
    assert merge_eval(shards[:1]) == shards[0]

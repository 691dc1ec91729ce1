"""fedlora's ServerApp and ClientApp run through an in-process Flower Grid (Flower's own message
objects and wire encoding, no SuperLink): a fedlora config gives the same global adapter and the
same evaluation as ``fedlora run`` (the in-process engine); faults are reported and the round
goes on; plans can come from the nodes' memory budgets; resume continues exactly."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Message  # noqa: E402

from fedlora.config import parse_config  # noqa: E402
from fedlora.engine.run import Engine  # noqa: E402
from fedlora.flower import serialization as S  # noqa: E402
from fedlora.flower import smoke  # noqa: E402
from fedlora.flower.client_app import app as client_app  # noqa: E402
from fedlora.flower.client_app import make_client_app  # noqa: E402
from flower_local_grid import run_in_process  # noqa: E402
from fedlora.flower.options import FlowerOptions  # noqa: E402
from fedlora.flower.server_app import app as server_app  # noqa: E402
from fedlora.flower.server_app import make_server_app  # noqa: E402
from fedlora.strategies.registry import make_strategy  # noqa: E402

CONFIG = """
[run]
name = "flower-test"
rounds = 2
seed = 3
[model]
name = "tiny"
target_modules = ["q_proj", "v_proj"]
[data]
tasks = ["rt_sentiment", "headline_source", "convention_party", "word_sentiment"]
heldout_tasks = ["word_sentiment"]
num_clients = 3
max_train_per_task = 6
max_eval_per_task = 2
[clients]
ranks = [2, 4, 8]
budgets = [1100000, 1250000, 2000000]
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
batch_size = 4
"""


def _config_text(strategy: str) -> str:
    text = CONFIG.replace('name = "flexlora"', f'name = "{strategy}"')
    return text if strategy == "fedpilot" else text.replace("budgets = [1100000, 1250000, 2000000]\n", "")


def _nodes(n: int, **extra) -> list[dict]:
    return [{"partition-id": k, "num-partitions": n, **extra} for k in range(n)]


def _flower(out, config_text: str, nodes=None, **options):
    run_config = FlowerOptions(out_dir=str(out), **options).to_run_config() | {"fedlora-config": config_text}
    return run_in_process(server_app, client_app, nodes or _nodes(3), run_config)


def _records(out, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == kind]


def _checkpoint_adapter(out, name: str):
    from fedlora.engine.checkpoint import load_checkpoint

    state = load_checkpoint(out)
    strategy = make_strategy(name)
    strategy.load_state_dict(state["strategy"])
    return strategy.global_adapter()


def _assert_same_adapter(a, b):
    assert set(a) == set(b) and a
    for m in a:
        assert a[m].rank == b[m].rank and a[m].alpha == b[m].alpha
        torch.testing.assert_close(a[m].delta(), b[m].delta(), rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["flexlora", "fedpilot", "fedhello", "slora", "fedmomentum", "fedrot"])
def test_flower_run_equals_the_in_process_engine(tmp_path, strategy):
    # Prepare: the same config through `fedlora run`'s engine and through Flower
    text = _config_text(strategy)
    engine = Engine(parse_config(__import__("tomllib").loads(text)), tmp_path / "engine").run()
    # Execute (one evaluation node: a central evaluation, as the engine's)
    grid = _flower(tmp_path / "flower", text, eval_nodes=1)
    # Assert: same global adapter bit for bit, same plans (ranks), same evaluation
    _assert_same_adapter(_checkpoint_adapter(tmp_path / "flower", strategy), engine.strategy.global_adapter())
    flower_clients = [(r["round"], r["client"], r["rank"], r["trained_modules"], r["loss"]) for r in _records(tmp_path / "flower", "client")]
    engine_clients = [(r["round"], r["client"], r["rank"], r["trained_modules"], r["loss"]) for r in engine.records if r["type"] == "client"]
    assert flower_clients == engine_clients
    drop = {"seconds", "nodes", "type"}
    flower_evals = [{k: v for k, v in r.items() if k not in drop} for r in _records(tmp_path / "flower", "eval")]
    engine_evals = [{k: v for k, v in r.items() if k not in drop} for r in engine.records if r["type"] == "eval"]
    assert flower_evals == engine_evals and {e["round"] for e in flower_evals} == {0, 1, 2}
    types = [t for _, t in grid.delivered]
    assert types.count("query.resources") == 3 and types.count("train") == 6
    assert (tmp_path / "flower" / "adapter" / "adapter_config.json").exists()


def test_sharded_evaluation_covers_every_example_once(tmp_path):
    _flower(tmp_path, _config_text("flexlora"), **{"plans_from": "config"})
    evals = {(r["round"], r["split"]): r for r in _records(tmp_path, "eval")}
    assert evals[(2, "eval")]["n_examples"] == 6 and evals[(2, "eval")]["nodes"] == 3
    assert evals[(2, "heldout")]["n_examples"] == 2 and evals[(2, "heldout")]["nodes"] == 2


def test_plans_from_node_memory_budgets(tmp_path):
    # node k reports a budget; FlexLoRA gives it the largest rank level whose predicted peak fits
    text = _config_text("flexlora").replace("ranks = [2, 4, 8]", "rank_levels = [2, 4, 8]")
    nodes = [{"partition-id": k, "num-partitions": 3, "memory-gb": gb} for k, gb in enumerate((0.0009, 0.0012, 1.0))]
    _flower(tmp_path, text, nodes=nodes, plans_from="resources")
    ranks = {r["client"]: r["rank"] for r in _records(tmp_path, "client")}
    assert ranks["client_002"] == 8 and ranks["client_000"] <= ranks["client_001"] <= 8


# ---------------------------------------------------------------- faults (smoke recipe: fast)
def _smoke(out, *, options=None, hook=None, **keys):
    run_config = {"smoke-rounds": 2, "smoke-clients": 3, "smoke-ranks": "2,4,8", "smoke-eval-every": 0, **keys}
    run_config |= FlowerOptions(out_dir=str(out), **(options or {})).to_run_config()
    app_s, app_c = make_server_app(smoke.recipes), make_client_app(smoke.recipes)
    return run_in_process(app_s, app_c, _nodes(3), run_config, hook=hook)


def test_faults_are_reported_and_the_round_completes(tmp_path):
    # Prepare: node 1 raises in round 1, node 2 sends a NaN, node 0 is well
    def hook(grid):
        nodes = sorted(grid.get_node_ids())

        def on_deliver(node, reply: Message) -> Message:
            if node == nodes[2] and reply.metadata.message_type == "train" and reply.has_content():
                arrays = reply.content[S.UPDATE]
                key = sorted(arrays.keys())[0]
                bad = S.array_to_tensor(arrays[key], key).clone()
                bad[0, 0] = float("nan")
                arrays[key] = S.tensor_to_array(bad)
            return reply

        grid.on_deliver = on_deliver
        grid.fail_next = {nodes[1]: "train"}

    # Execute
    _smoke(tmp_path, options={"max_missed_rounds": 1}, hook=hook)
    # Assert
    first, second = _records(tmp_path, "round")
    assert first["accepted"] == 1 and "NaN" in first["rejected"]["client-2"]
    assert "injected failure" in first["failed"]["client-1"] and first["dropped"] == ["client-1"]
    assert second["clients"] == ["client-0", "client-2"]


def test_malformed_reply_is_rejected_with_its_reason(tmp_path):
    def hook(grid):
        def on_deliver(node, reply: Message) -> Message:
            if reply.metadata.message_type == "train" and reply.has_content():
                del reply.content[f"{S.UPDATE}.meta"]
            return reply

        grid.on_deliver = on_deliver

    _smoke(tmp_path, hook=hook, **{"smoke-rounds": 1})
    (row,) = _records(tmp_path, "round")
    assert row["accepted"] == 0 and set(row["rejected"]) == {"client-0", "client-1", "client-2"}
    assert all("missing config record" in why for why in row["rejected"].values()) and "min-replies" in row["skipped"]


def test_min_replies_skips_a_round_without_enough_updates(tmp_path):
    def hook(grid):
        for node in sorted(grid.get_node_ids())[1:]:
            grid.silence(node, ["train"])

    opts = {"min_replies": 2, "round_timeout": 0.5, "query_timeout": 30, "max_missed_rounds": 5}
    _smoke(tmp_path, options=opts, hook=hook)
    rows = _records(tmp_path, "round")
    assert all("min-replies = 2" in r["skipped"] for r in rows)
    assert all(set(r["timed_out"]) == {"client-1", "client-2"} for r in rows)


def test_resume_continues_from_the_checkpoint(tmp_path):
    # Prepare: a full run as reference, then a run stopped after round 1
    _smoke(tmp_path / "full")
    _smoke(tmp_path / "part", **{"smoke-rounds": 1})
    # Execute
    _smoke(tmp_path / "part", options={"resume": True})
    # Assert
    _assert_same_adapter(_checkpoint_adapter(tmp_path / "part", "flexlora"), _checkpoint_adapter(tmp_path / "full", "flexlora"))
    assert [r["round"] for r in _records(tmp_path / "part", "round")] == [1, 2]


def test_a_second_run_into_a_used_folder_is_refused(tmp_path):
    _smoke(tmp_path, **{"smoke-rounds": 1})
    with pytest.raises(Exception, match="already holds a run"):
        _smoke(tmp_path, **{"smoke-rounds": 1})


def test_clients_without_a_node_are_reported_and_the_run_goes_on(tmp_path, capsys):
    # the config has 3 clients; only 2 nodes connect (node-wait-timeout short)
    text = _config_text("flexlora")
    _flower(tmp_path, text, nodes=_nodes(3)[:2], node_wait_timeout=1.0)
    out = capsys.readouterr().out
    assert "1 of the config's clients have no node (never connected or refused): client_002" in out
    rounds = _records(tmp_path, "round")
    assert len(rounds) == 2 and all(r["accepted"] == 2 for r in rounds)


def test_a_personalised_method_keeps_its_client_state_in_the_results_folder(tmp_path):
    text = _config_text("flexlora").replace('name = "flexlora"', 'name = "fedsa"')
    _flower(tmp_path, text)
    files = sorted((tmp_path / "client_state").glob("*/v*.pt"))
    assert {f.parent.name for f in files} == {"client_000", "client_001", "client_002"}
    assert len(_records(tmp_path, "round")) == 2

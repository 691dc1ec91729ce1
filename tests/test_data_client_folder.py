"""fedlora.data.client_folder: FlexLoRA's per-client folder layout, on a folder the test writes itself."""

from __future__ import annotations

import json

import pytest

from fedlora.config import ConfigError, parse_config
from fedlora.data.client_folder import client_folder_ids, load_client_folder
from fedlora.engine.data import build_data

IDS = (3, 11, 20, 104, 7)


def _write(folder, cid, kind, n):
    rows = [{"instruction": f"task {cid}: repeat", "input": f"{kind} {i}", "output": f"out {cid} {i}",
             "category": f"Task {cid}.json"} for i in range(n)]  # fmt: skip
    (folder / f"local_{kind}_{cid}.json").write_text(json.dumps(rows))


@pytest.fixture
def folder(tmp_path):
    for cid in IDS:
        _write(tmp_path, cid, "training", 10 + cid % 5)
        _write(tmp_path, cid, "eval", 3)
        _write(tmp_path, cid, "test", 4)
    (tmp_path / "README.md").write_text("not a client file")
    return tmp_path


def test_ids_are_read_from_training_files_in_numeric_order(folder):
    assert client_folder_ids(folder) == sorted(IDS)


def test_participants_train_and_unseen_clients_are_held_out(folder):
    data = load_client_folder(folder, num_clients=3, heldout_clients=2, max_eval_per_client=2, seed=1)
    train_ids = {int(c.split("_")[1]) for c in data.clients}
    unseen = {int(t.split()[1]) for t in data.heldout_tasks}
    assert len(train_ids) == 3 and len(unseen) == 2 and train_ids | unseen == set(IDS) and not train_ids & unseen
    for cid, examples in data.clients.items():
        n = int(cid.split("_")[1])
        assert len(examples) == 10 + n % 5 and {ex.task for ex in examples} == {f"Task {n}"}
        assert all(ex.input.startswith("training") and ex.choices is None for ex in examples)
    assert len(data.eval) == 6 and all(ex.input.startswith("test") for ex in data.eval + data.heldout)
    assert len(data.heldout) == 4 and {ex.task for ex in data.heldout} == set(data.heldout_tasks)
    again = load_client_folder(folder, num_clients=3, heldout_clients=2, max_eval_per_client=2, seed=1)
    assert again.clients == data.clients and again.heldout == data.heldout  # seeded
    other = load_client_folder(folder, num_clients=3, heldout_clients=2, max_eval_per_client=2, seed=2)
    assert (set(other.clients), other.heldout_tasks) != (set(data.clients), data.heldout_tasks) or other.eval != data.eval


def test_eval_files_and_caps(folder):
    data = load_client_folder(folder, num_clients=5, max_train_per_client=4, max_eval_per_client=10, eval_file="eval")
    assert all(len(v) == 4 for v in data.clients.values()) and len(data.eval) == 15 and not data.heldout
    assert all(ex.input.startswith("eval") for ex in data.eval)


def test_errors_name_the_key_and_the_fix(folder, tmp_path_factory):
    with pytest.raises(ValueError, match="exceed the 5 clients"):
        load_client_folder(folder, num_clients=4, heldout_clients=2)
    with pytest.raises(FileNotFoundError, match="data.train_path"):
        client_folder_ids(folder / "missing")
    with pytest.raises(ValueError, match="no local_training"):
        client_folder_ids(tmp_path_factory.mktemp("empty"))
    (folder / "local_test_3.json").write_text("[{")
    with pytest.raises(ValueError, match="local_test_3.json: not valid JSON"):
        load_client_folder(folder, num_clients=5)


def test_engine_builds_a_federation_from_the_folder(folder):
    cfg = parse_config({"model": {"name": "tiny"}, "data": {"source": "client_folder", "train_path": str(folder),
                        "num_clients": 3, "heldout_clients": 1, "max_eval_per_task": 2}})  # fmt: skip
    data = build_data(cfg)
    assert len(data.clients) == 3 and len(data.heldout) == 2 and len(data.eval) == 6
    with pytest.raises(ConfigError, match="data.heldout_clients"):
        parse_config({"data": {"source": "bundled", "heldout_clients": 2}})
    with pytest.raises(ConfigError, match="data.train_path is empty"):
        parse_config({"data": {"source": "client_folder"}})

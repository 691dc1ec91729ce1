"""Errors before work: a bad model name, data path or output folder fails at once, naming the key."""

from __future__ import annotations

import json
import os
import time

import pytest

from fedlora.config import parse_config
from fedlora.engine.preflight import preflight
from fedlora.engine.run import Engine, RunError


def _cfg(**sections):
    raw = {"model": {"name": "tiny"}, "data": {"source": "bundled"}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return parse_config(raw)


def test_good_settings_pass(tmp_path):
    assert preflight(_cfg(), tmp_path / "run") == []
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert preflight(_cfg(model={"name": str(tmp_path / "model")}), tmp_path / "run") == []


@pytest.mark.parametrize("name, expected", [
    ("/no/such/model", "no such folder"),
    ("./models/missing", "no such folder"),
    ("not a hub id!", "no such folder"),
])
def test_a_missing_model_folder_is_one_line_naming_the_key(tmp_path, name, expected):
    (problem,) = preflight(_cfg(model={"name": name}), tmp_path / "run")
    assert problem.startswith(f"model.name = {name!r}") and expected in problem


def test_a_folder_without_config_json(tmp_path):
    (problem,) = preflight(_cfg(model={"name": str(tmp_path)}), tmp_path / "run")
    assert "config.json" in problem


def test_an_uncached_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    started = time.perf_counter()
    (problem,) = preflight(_cfg(model={"name": "SomeOrg/misspelled-model"}), tmp_path / "run")
    assert time.perf_counter() - started < 2 and "hub is unreachable" in problem and "model.name" in problem


def test_data_paths_are_checked_before_any_loading(tmp_path):
    cfg = _cfg(data={"source": "jsonl", "train_path": str(tmp_path / "missing.jsonl"), "eval_path": str(tmp_path / "e.jsonl")})
    problems = preflight(cfg, tmp_path / "run")
    assert [p.split(" = ")[0] for p in problems] == ["data.train_path", "data.eval_path"]
    folder = _cfg(data={"source": "client_folder", "train_path": str(tmp_path / "nope")})
    assert "data.train_path" in preflight(folder, tmp_path / "run")[0]


def test_an_unwritable_or_file_run_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file" in preflight(_cfg(), tmp_path / "file" / "run")[0]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in preflight(_cfg(), locked / "run")[0]


def test_the_engine_reports_every_problem_before_loading_anything(tmp_path):
    cfg = _cfg(model={"name": "/no/such/model"}, data={"source": "jsonl", "train_path": str(tmp_path / "x.jsonl")})
    engine = Engine(cfg, tmp_path / "run")
    with pytest.raises(RunError) as err:
        engine.run()
    assert "model.name" in str(err.value) and "data.train_path" in str(err.value)
    assert engine.data is None and not (tmp_path / "run").exists()


def test_a_malformed_jsonl_line_names_the_line_and_column(tmp_path):
    from fedlora.data.sources import load_jsonl

    path = tmp_path / "d.jsonl"
    good = json.dumps({"instruction": "i", "input": "", "output": "o", "task": "t"})
    path.write_text(good + "\n" + '{"instruction": "i", "input": , "output": "o"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid JSON \(Expecting value at column 31\)"):
        load_jsonl(path)

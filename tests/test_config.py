"""fedlora.config: TOML -> validated dataclasses, every error in one message, --set overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedlora.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_to_dict,
    dumps_toml,
    load_config,
    parse_config,
    parse_overrides,
    resolved_allocation,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


def _errors(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.errors


# ----------------------------------------------------------------------------- valid configs


def test_defaults_are_valid():
    cfg = parse_config({})
    assert cfg == Config()
    assert cfg.strategy.name == "flexlora" and resolved_allocation(cfg) == "flexlora"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.run.rounds >= 1


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.toml", "tiny.toml", "compare_methods.toml"} <= names


def test_values_are_typed_and_ints_widen_to_float():
    cfg = parse_config({"train": {"lr": 1, "local_steps": 3}, "clients": {"clients_per_round": 4}, "data": {"num_clients": 5}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.clients.clients_per_round == 4 and isinstance(cfg.clients.clients_per_round, int)


def test_strategy_params_are_collected():
    cfg = parse_config({"strategy": {"name": "hetlora", "gamma": 0.9, "prune": False}})
    assert cfg.strategy.params == {"gamma": 0.9, "prune": False}


def test_roundtrip_through_toml_text():
    cfg = parse_config({"strategy": {"name": "hetlora", "gamma": 0.9}, "data": {"heldout_tasks": ["a"], "tasks": ["a", "b"]},
                        "clients": {"ranks": [2, 4, 8, 16, 2, 4, 8, 16]}})  # fmt: skip
    text = dumps_toml(config_to_dict(cfg))
    assert parse_config(tomllib.loads(text)) == cfg


@pytest.mark.parametrize(("strategy", "allocation"), [("fedit", "uniform"), ("ffa", "uniform"), ("flexlora", "flexlora"),
                                                     ("hetlora", "flexlora"), ("flora", "flexlora")])  # fmt: skip
def test_auto_allocation_follows_the_strategy(strategy, allocation):
    assert resolved_allocation(parse_config({"strategy": {"name": strategy}})) == allocation


# ----------------------------------------------------------------------------- errors


def test_unknown_key_suggests_the_right_one():
    (error,) = _errors({"train": {"lrr": 1e-3}})
    assert error.startswith("train.lrr: unknown key") and "did you mean 'lr'" in error


def test_unknown_section_suggests_the_right_one():
    (error,) = _errors({"trian": {"lr": 1e-3}})
    assert "[trian]: unknown section" in error and "did you mean 'train'" in error


def test_bad_value_names_key_value_and_allowed():
    (error,) = _errors({"train": {"lr": -1.0}})
    assert error == "train.lr = -1.0: must be > 0"
    (error,) = _errors({"clients": {"rank_distribution": "unifrom"}})
    assert "clients.rank_distribution = 'unifrom'" in error and "'heavy-tail-light'" in error and "did you mean 'uniform'" in error


def test_wrong_type_is_reported():
    (error,) = _errors({"train": {"batch_size": "four"}})
    assert error == "train.batch_size = 'four': must be an integer; got a string"
    (error,) = _errors({"run": {"rounds": True}})
    assert "run.rounds" in error and "integer" in error


def test_several_errors_in_one_message():
    with pytest.raises(ConfigError) as info:
        parse_config({"train": {"lr": 0, "batch_size": 0, "optimiser": "adamw"}, "eval": {"generate": "yes"}, "foo": {}})
    err = info.value
    assert len(err.errors) == 5
    text = str(err)
    assert text.startswith("invalid config (5 errors):")
    for key in ("train.lr", "train.batch_size", "train.optimiser", "eval.generate", "[foo]"):
        assert key in text


def test_unknown_strategy_argument_is_reported_with_the_valid_ones():
    (error,) = _errors({"strategy": {"name": "hetlora", "gama": 0.9}})
    assert "strategy.gama" in error and "did you mean 'gamma'" in error and "regularization" in error


def test_cross_field_errors():
    errors = _errors({"data": {"num_clients": 3}, "clients": {"ranks": [4, 8], "clients_per_round": 5}})
    assert any("clients.ranks has 2 values for data.num_clients = 3" in e for e in errors)
    assert any("clients.clients_per_round = 5" in e for e in errors)
    (error,) = _errors({"strategy": {"name": "fedit"}, "clients": {"allocation": "flexlora"}})
    assert "needs one rank for all clients" in error and "'uniform'" in error
    (error,) = _errors({"strategy": {"name": "fedpilot"}})
    assert "budget_low/budget_high" in error
    (error,) = _errors({"data": {"source": "jsonl"}})
    assert error.startswith("data.train_path is empty")
    (error,) = _errors({"clients": {"clients_per_round": 1.5}})
    assert "fraction in (0, 1]" in error


def test_bad_memory_budget_is_reported():
    errors = _errors({"strategy": {"name": "fedpilot"}, "clients": {"budget_low": "lots", "budget_high": "2GiB"}})
    assert any(e.startswith("clients.budget_low") and "'lots'" in e for e in errors)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# ----------------------------------------------------------------------------- overrides


def test_overrides_parse_toml_literals_and_bare_strings():
    parsed = dict((".".join(k), v) for k, v in parse_overrides(
        ["train.lr=1e-3", "run.rounds=5", "eval.generate=false", "clients.ranks=[4, 8]", "model.name=tiny", 'run.name="a b"']))  # fmt: skip
    assert parsed == {"train.lr": 1e-3, "run.rounds": 5, "eval.generate": False, "clients.ranks": [4, 8],
                      "model.name": "tiny", "run.name": "a b"}  # fmt: skip


def test_overrides_apply_and_validate(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nname = "x"\n[train]\nlr = 0.1\n')
    cfg = load_config(path, ["train.lr=0.5", "strategy.name=hetlora", "strategy.gamma=0.9"])
    assert cfg.train.lr == 0.5 and cfg.strategy.params == {"gamma": 0.9} and cfg.run.name == "x"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lrr=0.5", "train.lr=-2"])
    assert len(info.value.errors) == 2


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["lr=3"])

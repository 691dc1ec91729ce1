"""Strategy registry: names, construction, clear errors."""

from __future__ import annotations

import pytest

from fedlora.strategies import FedIT, FFALoRA, FlexLoRA, FLoRA, HetLoRA, STRATEGY_NAMES, make_strategy, strategy_class


def test_names_and_classes():
    assert STRATEGY_NAMES == ("fedit", "flexlora", "hetlora", "flora", "ffa", "fedpilot", "fedex", "rolora", "fedsvd", "lorafair", "fedmomentum", "slora", "fedsa", "feddpa", "fedra", "fedhello", "fedrot", "fedprox", "local")
    for name, cls in zip(STRATEGY_NAMES, (FedIT, FlexLoRA, HetLoRA, FLoRA, FFALoRA)):
        assert strategy_class(name) is cls and cls.name == name
    for name in STRATEGY_NAMES:
        assert strategy_class(name).name == name


def test_make_strategy_passes_keyword_arguments():
    s = make_strategy("HetLoRA", seed=3, gamma=0.9)
    assert isinstance(s, HetLoRA) and s.seed == 3 and s.gamma == 0.9


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError, match=r"unknown strategy 'flexlor'; valid names: fedit, flexlora.*Did you mean 'flexlora'"):
        make_strategy("flexlor")


def test_bad_argument_names_the_strategy():
    with pytest.raises(ValueError, match=r"'fedit' \(FedIT\) rejected its arguments \['rank'\]"):
        make_strategy("fedit", rank=4)


def test_fedpilot_is_either_available_or_a_clear_import_error():
    try:
        cls = strategy_class("fedpilot")
    except ImportError as err:
        assert "fedlora.strategies.fedpilot" in str(err) and "FedPilot" in str(err)
    else:
        assert cls.__name__ == "FedPilot"


def test_config_accepts_exactly_the_registered_names():
    import dataclasses

    from fedlora.config import StrategySection

    (name_field,) = [f for f in dataclasses.fields(StrategySection) if f.name == "name"]
    assert set(name_field.metadata["choices"]) == set(STRATEGY_NAMES)
    assert all(n in name_field.metadata["help"] for n in STRATEGY_NAMES)

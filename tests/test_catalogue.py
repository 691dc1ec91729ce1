"""The method catalogue (read from the sources, no import) agrees with the registered classes, and a config
is read, validated and refused without importing torch: a typo answers before the training stack loads."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.catalogue import STRATEGY_NAMES, method_facts
from fedlora.strategies.registry import strategy_class

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_catalogue_facts_equal_the_classes(name):
    cls = strategy_class(name)
    params = inspect.signature(cls).parameters
    expected = tuple(p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in ("seed", "shapes"))
    facts = method_facts(name)
    assert facts.arguments == expected
    assert facts.heterogeneous_ranks == getattr(cls, "heterogeneous_ranks", True)


CODE = """
import sys
from fedlora.config import ConfigError, load_config
try:
    load_config({path!r}, ["train.lr_typo=1", "strategy.gama=0.5", "clients.budget_low='1GiB'"])
except ConfigError as err:
    print(err)
print("torch imported:", "torch" in sys.modules)
"""


def test_a_config_error_is_reported_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", CODE.format(path=str(REPO / "examples" / "quickstart.toml"))],
                         capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert "train.lr_typo: unknown key; did you mean 'lr'?" in out.stdout, out.stdout + out.stderr
    assert "strategy.gama" in out.stdout
    assert "torch imported: False" in out.stdout

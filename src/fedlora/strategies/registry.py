"""Strategy names -> classes, imported lazily so that a missing optional method fails clearly.

``make_strategy("flexlora", seed=1)`` builds a strategy from flat keyword arguments (config files
become constructor calls through this one function).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from fedlora.catalogue import ASYNC_METHODS, LOCATIONS, STRATEGY_NAMES
from fedlora.strategies.base import Strategy

__all__ = ["STRATEGY_NAMES", "strategy_class", "make_strategy", "ASYNC_METHODS"]

_LOCATIONS = LOCATIONS


def strategy_class(name: str) -> type:
    """The class registered under ``name`` (imports its module on first use)."""
    key = str(name).strip().lower()
    if key not in _LOCATIONS:
        close = difflib.get_close_matches(key, STRATEGY_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGY_NAMES)}.{hint}")
    module_name, class_name = _LOCATIONS[key]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ImportError(
            f"strategy {key!r} is registered but its module {module_name} (class {class_name}) is not available "
            f"in this installation; pick another of {', '.join(n for n in STRATEGY_NAMES if n != key)}"
        ) from err
    try:
        return getattr(module, class_name)
    except AttributeError as err:
        raise ImportError(f"strategy {key!r}: module {module_name} defines no class {class_name}") from err


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build the strategy ``name`` with keyword-only constructor arguments (e.g. ``seed=0``).

    Raises:
        ValueError: unknown name (lists the valid ones) or arguments the constructor does not take.
        ImportError: a registered method whose module is missing (e.g. ``fedpilot``).
    """
    cls = strategy_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"strategy {name!r} ({cls.__name__}) rejected its arguments {sorted(kwargs)}: {err}") from err

"""The registered federated LoRA methods, described without importing them (no torch).

A config is validated before the training stack loads (a typo answers in well under 2 s): its
``strategy`` table is checked against each method's keyword-only constructor arguments and its
``heterogeneous_ranks`` flag, read here from the method's source with :mod:`ast`.
``fedlora.strategies.registry`` imports the classes themselves; ``tests/test_catalogue.py`` checks that
both agree for every method.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["STRATEGY_NAMES", "LOCATIONS", "ASYNC_METHODS", "MethodFacts", "method_facts"]

STRATEGY_NAMES: tuple[str, ...] = ("fedit", "flexlora", "hetlora", "flora", "ffa", "fedpilot", "fedex", "rolora", "fedsvd",
                                   "lorafair", "fedmomentum", "slora", "fedsa", "feddpa", "fedra", "fedhello", "fedrot", "fedprox", "local")
"""Every registered federated LoRA method, in the order reports list them."""

LOCATIONS: dict[str, tuple[str, str]] = {
    "fedit": ("fedlora.strategies.fedit", "FedIT"),
    "flexlora": ("fedlora.strategies.flexlora", "FlexLoRA"),
    "hetlora": ("fedlora.strategies.hetlora", "HetLoRA"),
    "flora": ("fedlora.strategies.flora", "FLoRA"),
    "ffa": ("fedlora.strategies.ffa", "FFALoRA"),
    "fedpilot": ("fedlora.strategies.fedpilot", "FedPilot"),
    "fedex": ("fedlora.strategies.fedex", "FedExLoRA"),
    "rolora": ("fedlora.strategies.rolora", "RoLoRA"),
    "fedsvd": ("fedlora.strategies.fedsvd", "FedSVD"),
    "lorafair": ("fedlora.strategies.lorafair", "LoRAFAIR"),
    "fedmomentum": ("fedlora.strategies.fedmomentum", "FedMomentum"),
    "slora": ("fedlora.strategies.slora", "SLoRA"),
    "fedsa": ("fedlora.strategies.fedsa", "FedSALoRA"),
    "feddpa": ("fedlora.strategies.feddpa", "FedDPA"),
    "fedra": ("fedlora.strategies.fedra", "FedRA"),
    "fedhello": ("fedlora.strategies.fedhello", "FedHeLLo"),
    "fedrot": ("fedlora.strategies.fedrot", "FedRotLoRA"),
    "fedprox": ("fedlora.strategies.fedprox", "FedProx"),
    "local": ("fedlora.strategies.local", "LocalOnly"),
}
"""Method name -> (module, class)."""

ASYNC_METHODS = ("fedit", "ffa", "flexlora", "hetlora", "fedprox")
"""Methods that run in ``run.mode = "async"`` (``fedlora.engine.asynchronous``): their rounds only move the
factors a stale update can be rebased onto."""

_NOT_ARGUMENTS = ("seed", "shapes")  # set by the engine, not by a config


@dataclass(frozen=True)
class MethodFacts:
    """What a config needs to know of a method: its configurable arguments and whether clients may differ in rank."""

    arguments: tuple[str, ...]
    heterogeneous_ranks: bool


@lru_cache(maxsize=None)
def method_facts(name: str) -> MethodFacts:
    """The facts of registered method ``name``, from its source file (nothing is imported).

    Raises:
        KeyError: ``name`` is not registered. FileNotFoundError: its module is not installed.
    """
    module, cls_name = LOCATIONS[name]
    source = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    arguments = tuple(a.arg for a in init.args.kwonlyargs if a.arg not in _NOT_ARGUMENTS) if init else ()
    flag = True
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "heterogeneous_ranks" for t in node.targets):
            flag = bool(ast.literal_eval(node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "heterogeneous_ranks" and node.value:
            flag = bool(ast.literal_eval(node.value))
    return MethodFacts(arguments, flag)

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


def _class_chain(module: str, cls_name: str) -> list[ast.ClassDef]:
    """The class ``module.cls_name`` and its fedlora base classes (first base, through ``from X import Base``)."""
    chain = []
    while module.startswith("fedlora."):
        source = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
        tree = ast.parse(source.read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        chain.append(cls)
        base = next((b.id for b in cls.bases if isinstance(b, ast.Name)), None)
        if base is None:
            break
        if not any(isinstance(n, ast.ClassDef) and n.name == base for n in tree.body):  # defined elsewhere: where it is imported from
            module = next((n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom) and any(a.name == base for a in n.names)), "")
        cls_name = base
    return chain


def _ranks_flag(cls: ast.ClassDef) -> bool | None:
    for node in cls.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) and node.value else []
        if any(isinstance(t, ast.Name) and t.id == "heterogeneous_ranks" for t in targets):
            return bool(ast.literal_eval(node.value))
    return None


@lru_cache(maxsize=None)
def method_facts(name: str) -> MethodFacts:
    """The facts of registered method ``name``, from its source file and those of its fedlora base classes
    (nothing is imported): the keyword arguments of the nearest ``__init__`` and the nearest
    ``heterogeneous_ranks`` (default True).

    Raises:
        KeyError: ``name`` is not registered. FileNotFoundError: its module is not installed.
    """
    chain = _class_chain(*LOCATIONS[name])
    init = next((n for cls in chain for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    arguments = tuple(a.arg for a in init.args.kwonlyargs if a.arg not in _NOT_ARGUMENTS) if init else ()
    flag = next((f for f in map(_ranks_flag, chain) if f is not None), True)
    return MethodFacts(arguments, flag)

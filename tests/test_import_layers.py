"""The house's layering: no import circle between modules, and no import from a lower floor to a higher one.

Every ``import``/``from ... import`` of ``src/fedlora`` (also those inside functions) is read from the source
with ``ast``; a package's ``__init__`` only re-exports, so it is not a node. A new room must be given a floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

FLOORS = {
    "modelspec": 0, "testing": 0, "errors": 0, "units": 0, "catalogue": 0,
    "allocation": 1, "models": 1,
    "lora": 2, "data": 2,
    "strategies": 3, "eval": 3,
    "config": 4, "client": 4, "report": 4,
    "engine": 5,
    "export": 6, "bench": 6, "flower": 6,
    "cli": 7, "__main__": 8,
}  # fmt: skip
"""Rooms (the first name under ``fedlora``) by floor: a room imports only from lower floors or itself."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "fedlora").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] != "__init__":
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _room(module: str) -> str:
    return module.split(".")[1]


def test_no_import_circle_between_modules():
    graph, cycles = _graph(), []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_every_import_goes_down_the_floors():
    graph = _graph()
    rooms = {_room(m) for m in graph}
    assert rooms <= set(FLOORS), f"rooms without a floor: {sorted(rooms - set(FLOORS))}; add them to FLOORS"
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if _room(a) != _room(b) and FLOORS[_room(a)] <= FLOORS[_room(b)])  # fmt: skip
    assert not upward, "imports that do not go down the floors:\n" + "\n".join(upward)

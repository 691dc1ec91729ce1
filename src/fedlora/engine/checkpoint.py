"""One resumable checkpoint per run folder, written atomically (temporary file + ``os.replace``).

It holds everything a run needs to continue exactly where it stopped: the last completed round,
the strategy state (global adapter included), the planner state (Fed-pilot importance), the RNG
states, every metrics record so far and the config that produced them. A resumed run checks that
the config still describes the same federation (only ``run.rounds``/``eval_every``/
``checkpoint_every``/``threads``, the run's name and folder and ``[eval]`` may change).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["CHECKPOINT_FILE", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "config_differences"]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
_MAY_CHANGE = {("run", "rounds"), ("run", "eval_every"), ("run", "checkpoint_every"), ("run", "name"), ("run", "out_dir"),
               ("run", "threads")}


def save_checkpoint(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically; a crash leaves the previous one intact."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint of ``run_dir``, or None when there is none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}; this fedlora reads format {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    """Python and torch (CPU, and CUDA when present) RNG states."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def config_differences(saved: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Keys (``section.key``) whose values differ between two config dicts, except those a resume may change."""
    out = []
    for section in sorted(set(saved) | set(current)):
        if section == "eval":
            continue
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) not in _MAY_CHANGE and a.get(key) != b.get(key):
                out.append(f"{section}.{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    return out

"""Resumable checkpoints of a run folder, written atomically (temporary file + ``os.replace``), verified on load.

The newest is ``checkpoint.pt``; the previous ones are kept as ``checkpoint.1.pt``, ... (``run.keep_checkpoints``,
default 2). Each file carries the SHA-256 of its contents; a corrupt newest checkpoint is reported in one
line and the previous one is used. Loading never unpickles code (``weights_only=True``).

It holds everything a run needs to continue exactly where it stopped: the last completed round,
the strategy state (global adapter included), the planner state (Fed-pilot importance), the RNG
states, every metrics record so far and the config that produced them. A resumed run checks that
the config still describes the same federation (only ``run.rounds``/``eval_every``/
``checkpoint_every``/``threads``, the run's name and folder and ``[eval]`` may change).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

__all__ = ["CHECKPOINT_FILE", "FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_files",
           "remove_stale_temp_files", "rng_state", "set_rng_state", "config_differences"]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
KEEP_DEFAULT = 2
_MAGIC = b"FEDLORA-CHECKPOINT sha256="
_MAY_CHANGE = {("run", "rounds"), ("run", "eval_every"), ("run", "eval_last"), ("run", "log_to"), ("run", "checkpoint_every"), ("run", "name"), ("run", "out_dir"),
               ("run", "threads"), ("run", "keep_checkpoints")}


class CheckpointError(ValueError):
    """No checkpoint of a run folder can be read (each one is corrupt, truncated or of another format)."""


def checkpoint_files(run_dir: str | Path, keep: int = 16) -> list[Path]:
    """``checkpoint.pt`` (the latest), then ``checkpoint.1.pt``, ``checkpoint.2.pt`` ... (older), those that exist."""
    run_dir = Path(run_dir)
    names = [CHECKPOINT_FILE] + [f"checkpoint.{k}.pt" for k in range(1, keep)]
    return [run_dir / n for n in names if (run_dir / n).is_file()]


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoint writes that were interrupted (call with the run folder locked)."""
    stale = sorted(Path(run_dir).glob(f".{CHECKPOINT_FILE}.*")) if Path(run_dir).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(run_dir: str | Path, state: Mapping[str, Any], *, keep: int = KEEP_DEFAULT) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically, keeping the ``keep - 1`` previous ones as
    ``checkpoint.1.pt`` (newest) ... A crash at any point leaves a readable checkpoint behind.

    The file starts with a line ``FEDLORA-CHECKPOINT sha256=<hex>`` holding the SHA-256 of the
    ``torch.save`` bytes that follow, so :func:`load_checkpoint` detects any flipped or missing byte.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 checkpoints, got {keep}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    target = run_dir / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        _rotate(run_dir, keep)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _rotate(run_dir: Path, keep: int) -> None:
    """checkpoint.(k-1).pt -> checkpoint.k.pt ..., checkpoint.pt -> checkpoint.1.pt; the oldest beyond ``keep`` goes."""
    names = [CHECKPOINT_FILE] + [f"checkpoint.{k}.pt" for k in range(1, keep)]
    oldest = run_dir / f"checkpoint.{keep - 1}.pt" if keep > 1 else None
    if keep == 1:
        return  # os.replace of the new file drops the old one
    if oldest is not None and oldest.exists():
        oldest.unlink()
    for older, newer in reversed(list(zip(names[1:], names[:-1]))):
        if (run_dir / newer).exists():
            os.replace(run_dir / newer, run_dir / older)


def _read(path: Path) -> dict[str, Any]:
    """One checkpoint file, verified; raises CheckpointError with the reason."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot be read ({err.strerror})") from None
    if not raw:
        raise CheckpointError("is empty")
    if raw.startswith(_MAGIC):
        header, sep, payload = raw.partition(b"\n")
        if not sep:
            raise CheckpointError("is truncated inside its header")
        expected = header[len(_MAGIC):].decode("ascii", "replace")
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise CheckpointError(f"fails its content hash (stored sha256 {expected[:12]}..., computed {actual[:12]}...; "
                                  "truncated or corrupted)")  # fmt: skip
    else:
        payload = raw  # a checkpoint of fedlora 0.1, without a hash
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on garbage
        raise CheckpointError(f"is not a readable checkpoint (torch.load: {type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"has checkpoint format {found!r}; this fedlora reads format {FORMAT_VERSION}")
    return state


def load_checkpoint(run_dir: str | Path, *, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``run_dir``, or None when there is none.

    A corrupt newest file is reported in one line through ``warn`` (default: standard error) and the
    previous checkpoint is used instead, so corruption costs at most one checkpoint interval.

    Raises:
        CheckpointError: checkpoint files exist but none of them can be read.
    """
    warn = warn or (lambda text: print(f"fedlora: warning: {text}", file=sys.stderr, flush=True))
    files = checkpoint_files(run_dir)
    problems = []
    for i, path in enumerate(files):
        try:
            state = _read(path)
        except CheckpointError as err:
            problems.append(f"{path} {err}")
            following = f"falling back to {files[i + 1].name}" if i + 1 < len(files) else "no older checkpoint is left"
            warn(f"checkpoint {path} {err}; {following}")
            continue
        return state
    if problems:
        raise CheckpointError(f"no readable checkpoint in {run_dir}: " + "; ".join(problems)
                              + ". Start a new run (another run.name or --out), or restore the folder from a backup")
    return None


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
    """Keys (``section.key``) whose values differ between two config dicts, except those a resume may change.

    A key the saved config lacks (added in a later fedlora version) counts as its default value.
    """
    from fedlora.config import Config, config_to_dict

    defaults = config_to_dict(Config())
    out = []
    for section in sorted(set(saved) | set(current)):
        if section == "eval":
            continue
        a, b = dict(defaults.get(section, {})) | dict(saved.get(section, {})), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) not in _MAY_CHANGE and a.get(key) != b.get(key):
                out.append(f"{section}.{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    return out

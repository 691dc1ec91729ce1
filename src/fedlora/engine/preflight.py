"""Errors before work: the model, the data paths and the output folder are checked before anything loads.

:func:`preflight` returns one line per problem, each naming the config key, the value and the fix:

- ``model.name``: ``tiny`` and ``bundled:*`` are fine; an existing folder must hold a ``config.json``;
  a value that looks like a path (``/``, ``./``, ``~``, ``..``) but does not exist is an error; a hub
  id (``org/name``) not in the local Hugging Face cache needs the hub: with ``HF_HUB_OFFLINE=1`` or no
  network (one TCP connect to ``huggingface.co:443``, 3 s, no retries) that is an error at once
  instead of a minute of download retries.
- ``data.train_path`` / ``eval_path`` / ``heldout_path``: a JSONL file must exist; a client folder must
  exist (source ``client_folder``); ``hf`` paths that look local must exist.
- the run folder must be creatable and writable.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from fedlora.config import Config

__all__ = ["preflight", "preflight_data_and_output", "hub_reachable"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (and ``HF_HUB_OFFLINE`` is not set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.sep in value.rstrip(os.sep) and Path(value).parent.exists() and not _HUB_ID.match(value)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _model_errors(name: str) -> list[str]:
    if name == "tiny" or name.startswith("bundled:"):
        return []
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"model.name = {name!r}: the folder holds no config.json; point it at a saved Hugging Face model folder"]
        return []
    if path.exists():
        return [f"model.name = {name!r}: is a file, not a model folder; point it at a saved Hugging Face model folder or a hub id"]
    if _looks_like_path(name) or not _HUB_ID.match(name):
        return [f"model.name = {name!r}: no such folder; check the path, or use a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"]
    if _in_hub_cache(name) or hub_reachable():
        return []
    return [f"model.name = {name!r}: not a local folder, not in the Hugging Face cache, and the hub is unreachable (offline or "
            "HF_HUB_OFFLINE=1); download it where there is network, or use 'bundled:smollm2'"]


def _data_errors(cfg: Config) -> list[str]:
    d, errors = cfg.data, []
    for key in ("train_path", "eval_path", "heldout_path"):
        value = getattr(d, key)
        if not value:
            continue
        path = Path(value).expanduser()
        if d.source == "jsonl" and not path.is_file():
            errors.append(f"data.{key} = {value!r}: no such file; give the path of a JSONL file (one example per line)")
        elif d.source == "client_folder" and not path.is_dir():
            errors.append(f"data.{key} = {value!r}: no such folder; give a folder of local_training_<id>.json files")
        elif d.source == "hf" and _looks_like_path(value) and not path.exists():
            errors.append(f"data.{key} = {value!r}: no such file or folder; give a local dataset path or a hub dataset id")
    return errors


def _output_errors(run_dir: Path) -> list[str]:
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"run folder {str(run_dir)!r}: {probe} is a file, not a folder; choose another run.out_dir / --out"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"run folder {str(run_dir)!r}: {probe} is not writable; choose another run.out_dir / --out"]
    return []


def _tracker_errors(cfg: Config) -> list[str]:
    """A tracker of ``run.log_to`` whose library is not installed is refused before the run, never skipped."""
    import importlib.util

    from fedlora.engine.tracking import TRACKER_PACKAGES

    out = []
    for name in cfg.run.log_to:
        module, install = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            out.append(f"run.log_to names {name!r} but {module} is not installed: {install}, or remove it from run.log_to")
    return out


def _precision_errors(cfg: Config) -> list[str]:
    """A quantized base (the run's or a client's) without bitsandbytes is refused before anything loads."""
    import importlib.util

    from fedlora.config import client_precisions

    quantized = sorted(client_precisions(cfg) - {"none"})
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        return [f"a {'/'.join(quantized)} base (model.quantization or clients.quantization/precision_options) needs "
                "bitsandbytes: pip install 'fedlora[quantization]', or keep every base at 'none'"]
    return []


def preflight(cfg: Config, run_dir: str | Path) -> list[str]:
    """Every problem found with the model, the data paths, the trackers and the run folder (empty: go)."""
    return (_model_errors(cfg.model.name) + _precision_errors(cfg) + _data_errors(cfg) + _tracker_errors(cfg)
            + _output_errors(Path(run_dir)))  # fmt: skip


def preflight_data_and_output(cfg: Config, run_dir: str | Path) -> list[str]:
    """:func:`preflight` without the model (the caller passed an already loaded one)."""
    return _precision_errors(cfg) + _data_errors(cfg) + _tracker_errors(cfg) + _output_errors(Path(run_dir))

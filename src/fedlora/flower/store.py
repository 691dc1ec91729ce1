"""A Flower run's folder on the SuperLink machine, laid out as an in-process run folder (the
engine's own checkpoint and metrics-log helpers), so ``fedlora report`` and ``fedlora export``
work on it: ``metrics.jsonl``, ``checkpoint.pt`` (atomic; everything a resume needs),
``config.toml`` and ``adapter/`` (the final global adapter in PEFT format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from fedlora.engine.checkpoint import CheckpointError, config_differences, load_checkpoint, remove_stale_temp_files, save_checkpoint
from fedlora.engine.lock import RunFolderLocked, RunLock
from fedlora.engine.metrics_log import METRICS_FILE, MetricsLog
from fedlora.lora.factors import LoraFactors

__all__ = ["RunStore", "DEFAULT_OUT_DIR", "RunFolderError"]

DEFAULT_OUT_DIR = "fedlora-flower-results"


class RunFolderError(RuntimeError):
    """The results folder does not fit the request (resume without checkpoint, or the reverse)."""


class RunStore:
    """Results folder of one Flower run.

    Args:
        out_dir: the folder (created); empty means ``./fedlora-flower-results``.
        resume: continue from the folder's checkpoint (required to exist); otherwise the folder
            must not hold a checkpoint already.
        config: the fedlora config dict; on resume it must match the checkpoint's (same rules as
            ``fedlora run --resume``).
    """

    def __init__(self, out_dir: str | os.PathLike, *, resume: bool, config: Mapping[str, Any] | None = None) -> None:
        self.root = Path(out_dir or DEFAULT_OUT_DIR).expanduser().resolve()
        self.checkpoint_path = self.root / "checkpoint.pt"
        self._lock = RunLock(self.root)
        try:
            self._lock.acquire()
        except RunFolderLocked as err:
            raise RunFolderError(str(err)) from None
        try:
            self._open(resume, config)
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the folder's lock (the server calls it when the run ends)."""
        self._lock.release()

    def _open(self, resume: bool, config: Mapping[str, Any] | None) -> None:
        remove_stale_temp_files(self.root)
        try:
            self.state = load_checkpoint(self.root)
        except CheckpointError as err:
            raise RunFolderError(str(err)) from None
        if resume and self.state is None:
            raise RunFolderError(f"resume = true but {self.root} holds no checkpoint; start without resume, or set out-dir to the run folder")
        if not resume and self.state is not None:
            raise RunFolderError(f"{self.root} already holds a run (checkpoint after round {self.state['round']}); set resume = true "
                                 "to continue it (flwr run ... --run-config 'resume=true'), or choose another out-dir")  # fmt: skip
        if self.state is not None and config is not None and self.state.get("config") is not None:
            diffs = config_differences(self.state["config"], config)
            if diffs:
                raise RunFolderError(f"the config differs from the one that wrote {self.checkpoint_path}: " + "; ".join(diffs))
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = dict(config) if config is not None else None
        if self.config is not None:
            from fedlora.config import dumps_toml

            (self.root / "config.toml").write_text(dumps_toml(self.config), encoding="utf-8")
        self.log = MetricsLog(self.root / METRICS_FILE, self.state["records"] if self.state else ())

    @property
    def first_round(self) -> int:
        return int(self.state["round"]) + 1 if self.state else 1

    def save_checkpoint(self, server_round: int, strategy: Any, planner: Any) -> Path:
        """Round, config, strategy and planner state, and every record so far. No RNG state: the
        server's randomness (sampling, client seeds) is derived from (seed, round, client)."""
        return save_checkpoint(self.root, {
            "round": int(server_round), "config": self.config, "strategy": strategy.state_dict(),
            "planner": planner.state_dict(), "records": self.log.records,
        })  # fmt: skip

    def save_adapter(self, adapter: Mapping[str, LoraFactors], base_model: str | None) -> Path | None:
        """The global adapter as a PEFT folder ``adapter/`` (nothing when it is empty)."""
        if not adapter:
            return None
        from fedlora.client.peft_bridge import save_peft_adapter

        return save_peft_adapter(adapter, self.root / "adapter", base_model)

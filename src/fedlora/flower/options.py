"""Flower-side settings of a fedlora run: deadlines, minimum replies, where results go.

They live in the Flower app's run config (``[tool.flwr.app.config]``, overridable with
``flwr run --run-config 'round-timeout=300'``), beside ``fedlora-config``, the fedlora TOML
config that says what to train. Keys use Flower's dash spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["FlowerOptions", "FlowerOptionsError"]


class FlowerOptionsError(ValueError):
    """One or more Flower settings are invalid; the message lists every problem."""


@dataclass(frozen=True)
class FlowerOptions:
    """Flower settings of a run.

    Attributes:
        round_timeout: seconds to wait for the training replies of a round; nodes that have
            not answered by then are reported as timed out and the round goes on without them.
        query_timeout: seconds to wait for the resource-query and evaluation replies.
        min_replies: a round is aggregated only if at least this many valid updates came back;
            otherwise it is skipped (global state unchanged) and reported.
        min_nodes: nodes to wait for before the first round; 0 means one per configured client.
        node_wait_timeout: seconds to wait for ``min_nodes`` to connect before starting with
            those present (at least ``min_replies`` are required).
        max_missed_rounds: a node that errs or stays silent this many rounds in a row is dropped
            for the rest of the run.
        out_dir: folder on the SuperLink machine for ``metrics.jsonl``, the checkpoint and the
            final adapter; empty means ``./fedlora-flower-results`` of the ServerApp process.
        resume: continue from the checkpoint in ``out_dir`` (which must exist); without it,
            ``out_dir`` must not hold a checkpoint yet.
        eval_nodes: nodes that share the evaluation (each takes a shard of the evaluation sets,
            metrics merged weighted by examples); 0 means every node. 1 reproduces a central
            evaluation exactly. How often to evaluate is the fedlora config's ``run.eval_every``.
        plans_from: ``"config"``: ranks / budgets as the fedlora config says (as ``fedlora run``);
            ``"resources"``: from each node's reported memory budget.
    """

    round_timeout: float = 600.0
    query_timeout: float = 180.0
    min_replies: int = 1
    min_nodes: int = 0
    node_wait_timeout: float = 120.0
    max_missed_rounds: int = 1
    out_dir: str = ""
    resume: bool = False
    eval_nodes: int = 0
    plans_from: str = "config"

    def to_run_config(self) -> dict[str, Any]:
        """The settings as Flower run-config entries (dash keys)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FlowerOptions":
        """Read the settings from a Flower run config; unknown keys are ignored (they belong to
        fedlora's config or to the user). Every invalid value is reported in one error."""
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            value, default = run_config[key], getattr(cls(), f.name)
            kind = type(default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                errors.append(f"{key} = {value!r} must be a {kind.__name__} (default {default!r})")
                continue
            values[f.name] = value
        options = cls(**{k: v for k, v in values.items()})
        errors += options._range_errors()
        if errors:
            raise FlowerOptionsError("invalid Flower settings in the run config:\n  - " + "\n  - ".join(errors))
        return options

    def _range_errors(self) -> list[str]:
        errors = []
        for key in ("round_timeout", "query_timeout", "node_wait_timeout"):
            if not getattr(self, key) > 0:
                errors.append(f"{key.replace('_', '-')} = {getattr(self, key)!r} must be > 0 seconds")
        if self.plans_from not in ("config", "resources"):
            errors.append(f"plans-from = {self.plans_from!r} must be 'config' or 'resources'")
        for key, low in (("min_replies", 1), ("min_nodes", 0), ("max_missed_rounds", 1), ("eval_nodes", 0)):
            if getattr(self, key) < low:
                errors.append(f"{key.replace('_', '-')} = {getattr(self, key)!r} must be >= {low}")
        return errors

"""Experiment tracking: every metric of ``metrics.jsonl`` mirrored to TensorBoard, MLflow or Weights & Biases.

``run.log_to = ["tensorboard"]`` (and/or ``"mlflow"``, ``"wandb"``) attaches a tracker to the run's metrics
log; ``metrics.jsonl`` stays the source of truth, and a tracker only receives what is appended to it:

- a ``round`` record: each numeric field as ``round/<field>`` at step = the round;
- a ``client`` record: each numeric field as ``client/<client id>/<field>`` at step = the round;
- an ``eval`` record: each numeric field as ``<split>/<field>`` (``heldout/rougeL``, ``eval/accuracy``,
  ``heldout/task/<task>/accuracy``, ...) at step = the round;
- a ``warning`` record: text ``warnings`` (TensorBoard) or a tag (MLflow / W&B);
- the run's config: TensorBoard hyperparameters (flattened ``section.key``) and its TOML as text; MLflow
  params; W&B config.

The trackers are the maintained libraries' own writers (``torch.utils.tensorboard.SummaryWriter`` over the
``tensorboard`` package, ``mlflow``, ``wandb`` in offline mode); each is an optional extra
(``pip install 'fedlora[tracking]'`` for TensorBoard). A tracker that is asked for but not installed is
refused when the run starts, never skipped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["TRACKERS", "TRACKER_PACKAGES", "Tracker", "make_trackers", "scalars_of", "flatten_config"]

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "pip install 'fedlora[tracking]'"), "mlflow": ("mlflow", "pip install mlflow"),
                    "wandb": ("wandb", "pip install wandb")}  # fmt: skip
"""Tracker -> (the module it needs, the command that installs it)."""
_SKIP = {"round", "type", "split", "client"}


def scalars_of(record: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """``(step, {tag: value})`` of one metrics record (module docstring); non-numeric fields are left out."""
    kind, step = record.get("type"), int(record.get("round") or 0)
    prefix = {"round": "round/", "client": f"client/{record.get('client')}/", "eval": f"{record.get('split')}/"}.get(str(kind))
    if prefix is None:
        return step, {}
    out = {}
    for key, value in record.items():
        if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[prefix + key] = float(value)
    return step, out


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"section.key": value}`` with lists as text: hyperparameters every tracker takes."""
    out: dict[str, Any] = {}
    for section, table in config.items():
        for key, value in (table.items() if isinstance(table, Mapping) else [("", table)]):
            name = f"{section}.{key}" if key else section
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Tracker:
    """One tracking backend: ``log(record)`` for each metrics record, ``close()`` at the end."""

    def log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the backend."""


class _TensorBoard(Tracker):
    def __init__(self, folder: Path, config: Mapping[str, Any], config_text: str) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(folder))
        for summary in hparams(flatten_config(config), {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```toml\n" + config_text + "\n```", 0)

    def log(self, record: Mapping[str, Any]) -> None:
        if record.get("type") == "warning":
            self.writer.add_text("warnings", str(record.get("text", "")), int(record.get("round") or 0))
            return
        step, scalars = scalars_of(record)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow(Tracker):
    def __init__(self, folder: Path, config: Mapping[str, Any], run_name: str) -> None:
        import mlflow

        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:  # the user's tracking server when set, else a folder of the run
            mlflow.set_tracking_uri(folder.resolve().as_uri())
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params(flatten_config(config))

    def log(self, record: Mapping[str, Any]) -> None:
        if record.get("type") == "warning":
            self.mlflow.set_tag(f"warning_round_{record.get('round')}", str(record.get("text", ""))[:5000])
            return
        step, scalars = scalars_of(record)
        if scalars:
            self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _WandB(Tracker):
    def __init__(self, folder: Path, config: Mapping[str, Any], run_name: str) -> None:
        import wandb

        self.run = wandb.init(dir=str(folder), name=run_name, config=flatten_config(config), mode="offline")

    def log(self, record: Mapping[str, Any]) -> None:
        step, scalars = scalars_of(record)
        if scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_trackers(names: Sequence[str], run_dir: str | Path, config: Mapping[str, Any], config_text: str,
                  run_name: str) -> list[Tracker]:  # fmt: skip
    """The trackers ``names`` asks for, writing under ``run_dir/tracking/<backend>``.

    Raises:
        ValueError: a name is not a tracker, or its library is not installed (with the command that installs it).
    """
    out: list[Tracker] = []
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"run.log_to: {name!r} is not a tracker; use any of {', '.join(TRACKERS)}")
        folder = Path(run_dir) / "tracking" / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if name == "tensorboard":
                out.append(_TensorBoard(folder, config, config_text))
            elif name == "mlflow":
                out.append(_MLflow(folder, config, run_name))
            else:
                out.append(_WandB(folder, config, run_name))
        except ImportError as err:
            for tracker in out:
                tracker.close()
            raise ValueError(f"run.log_to = {list(names)}: {name} is not installed ({err.name}); {TRACKER_PACKAGES[name][1]}, "
                             f"or remove {name!r} from run.log_to") from None
    return out

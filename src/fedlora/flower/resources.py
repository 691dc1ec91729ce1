"""What a SuperNode reports in the resource-query round: who it is, its memory and device, and
the shapes of its base model (so the server plans without loading the model, and a node running
a different model is caught before training).

A node's memory budget comes from its ``--node-config`` (``memory-gb``, set by its operator),
else from a measurement: free GPU memory on CUDA, available RAM on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from flwr.app import ConfigRecord, RecordDict

from fedlora.flower.serialization import MalformedMessageError
from fedlora.modelspec import ModelSpec, ModuleSpec

__all__ = ["NodeResources", "measure_memory", "spec_to_json", "spec_from_json", "resources_to_content", "content_to_resources", "RESOURCES"]

RESOURCES = "fedlora.resources"
_GIB = 1024**3


@dataclass(frozen=True)
class NodeResources:
    """One SuperNode's answer to the resource query.

    Attributes:
        client_id: the fedlora client this node plays (from its partition id or ``client-id``).
        device: torch device its training runs on, e.g. ``"cpu"`` or ``"cuda:0"``.
        budget_bytes: memory it may use for training.
        budget_source: ``"node-config"`` (operator's ``memory-gb``) or ``"measured"``.
        free_bytes: free memory measured on ``device`` when it answered.
        num_train_examples, num_eval_examples: sizes of its local data.
        spec_json: its base model's :class:`ModelSpec` as JSON (see :func:`spec_to_json`).
        importance_json: module -> local importance as JSON when the plans need it (Fed-pilot),
            else ``""``.
    """

    client_id: str
    device: str
    budget_bytes: int
    budget_source: str
    free_bytes: int
    num_train_examples: int
    num_eval_examples: int
    spec_json: str
    importance_json: str = ""

    @property
    def importance(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in json.loads(self.importance_json).items()} if self.importance_json else {}

    @property
    def spec(self) -> ModelSpec:
        return spec_from_json(self.spec_json)

    @property
    def spec_digest(self) -> str:
        """Short hash of the model shapes: nodes must agree on it."""
        return hashlib.sha256(self.spec_json.encode()).hexdigest()[:16]

    def summary(self) -> str:
        return (f"{self.client_id}: {self.device}, budget {self.budget_bytes / _GIB:.2f} GiB ({self.budget_source}), "
                f"{self.num_train_examples} train / {self.num_eval_examples} eval examples")  # fmt: skip


def measure_memory(device: torch.device) -> int:
    """Free memory in bytes on ``device``: ``cuda.mem_get_info`` on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def budget_from_node_config(node_config: Mapping[str, Any], free_bytes: int) -> tuple[int, str]:
    """``(bytes, source)``: ``memory-gb`` from the node config if set, else the measured free memory."""
    value = node_config.get("memory-gb")
    if value is None:
        return int(free_bytes), "measured"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"node config memory-gb = {value!r} must be a positive number of GiB, e.g. --node-config 'memory-gb=8'")
    return int(float(value) * _GIB), "node-config"


def spec_to_json(spec: ModelSpec) -> str:
    """A :class:`ModelSpec` as canonical JSON (the same model always gives the same text)."""
    return json.dumps(dataclasses.asdict(spec), sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str) -> ModelSpec:
    """Inverse of :func:`spec_to_json`."""
    try:
        data = json.loads(text)
        modules = tuple(ModuleSpec(**m) for m in data.pop("modules"))
        return ModelSpec(modules=modules, **data)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise MalformedMessageError(f"{RESOURCES}: the model spec does not decode ({err})") from None


def resources_to_content(res: NodeResources) -> RecordDict:
    return RecordDict({RESOURCES: ConfigRecord(dataclasses.asdict(res))})


def content_to_resources(content: RecordDict) -> NodeResources:
    """The :class:`NodeResources` in a query reply; a missing or mistyped field raises
    :class:`MalformedMessageError`."""
    record = content.config_records.get(RESOURCES)
    if record is None:
        raise MalformedMessageError(f"missing config record {RESOURCES!r} in the resource reply")
    values = {}
    for f in dataclasses.fields(NodeResources):
        value = record.get(f.name)
        kind = int if f.type == "int" else str
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise MalformedMessageError(f"{RESOURCES}: field {f.name!r} is {value!r}, expected {kind.__name__}")
        values[f.name] = value
    res = NodeResources(**values)
    spec_from_json(res.spec_json)
    try:
        res.importance
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise MalformedMessageError(f"{RESOURCES}: importance does not decode ({err})") from None
    return res

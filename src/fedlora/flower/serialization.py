"""fedlora objects <-> Flower records (``flwr.app``): the wire format of fedlora on Flower.

A round trip is exact: tensors keep their dtype (bfloat16 included) and values bit for bit.
Decoding never unpickles; anything a remote party sent that does not have the expected structure
raises :class:`MalformedMessageError` with the reason, so the server can reject that node's reply
instead of failing the round.

Layout of a message's ``RecordDict`` (keys are stable; a third-party Flower app can read them):

====================  ==============  =====================================================
key                   record          content
====================  ==============  =====================================================
``fedlora.payload``   ConfigRecord    plan (JSON), seed, train_A/B, options (JSON), round...
``fedlora.init``      ArrayRecord     ``<module>/A``, ``<module>/B`` starting factors
``fedlora.init.meta`` ConfigRecord    ``alphas`` (JSON module -> alpha) of ``fedlora.init``
``fedlora.base``      ArrayRecord     FLoRA's frozen ``base_delta`` (absent when None)
``fedlora.update``    ArrayRecord     a client's trained factors
``fedlora.global``    ArrayRecord     the global adapter sent for evaluation
``fedlora.metrics``   MetricRecord    train/eval metrics of a reply
====================  ==============  =====================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.strategies.base import Payload

__all__ = [
    "MalformedMessageError",
    "TrainInstruction",
    "EvalInstruction",
    "adapter_to_records",
    "records_to_adapter",
    "payload_to_content",
    "content_to_payload",
    "global_to_content",
    "content_to_global",
    "update_to_content",
    "content_to_update",
    "metrics_to_record",
    "content_nbytes",
    "record_to_metrics",
]

PAYLOAD, INIT, BASE, UPDATE, METRICS = "fedlora.payload", "fedlora.init", "fedlora.base", "fedlora.update", "fedlora.metrics"
GLOBAL = "fedlora.global"
_RAW_STYPE = "fedlora.raw-le"  # little-endian raw bytes, for dtypes numpy lacks (bfloat16)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class MalformedMessageError(ValueError):
    """A Flower message does not carry what fedlora expects (missing record, bad JSON, bad tensor).

    Attributes:
        reason: what is wrong, with the value found.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed fedlora message: {reason}. Run the same fedlora version on the server and every SuperNode.")


# ---------------------------------------------------------------- tensors
def tensor_to_array(t: torch.Tensor) -> Array:
    """One tensor as a Flower ``Array`` (numpy format; bfloat16 as raw little-endian bytes)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        data = t.view(torch.int16).numpy().astype("<i2").tobytes()
        return Array(dtype="bfloat16", shape=tuple(int(s) for s in t.shape), stype=_RAW_STYPE, data=data)
    return Array(t.numpy())


def content_nbytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (its communication cost, without protocol framing)."""
    return sum(len(arr.data) for record in content.array_records.values() for arr in record.values())


def array_to_tensor(arr: Array, where: str) -> torch.Tensor:
    """The tensor of an ``Array``; a dtype outside float16/32/64 and bfloat16 is refused."""
    if arr.dtype not in _DTYPES:
        raise MalformedMessageError(f"{where}: dtype {arr.dtype!r} is not one of {sorted(_DTYPES)}")
    try:
        if arr.stype == _RAW_STYPE:
            count = math.prod(arr.shape)
            if len(arr.data) != 2 * count:
                raise ValueError(f"{len(arr.data)} bytes for shape {arr.shape}")
            raw = np.frombuffer(arr.data, dtype="<i2").astype(np.int16)
            return torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(arr.shape)
        return torch.from_numpy(np.array(arr.numpy(), copy=True))
    except (ValueError, TypeError, RuntimeError) as err:
        raise MalformedMessageError(f"{where}: cannot decode array ({err})") from None


# ---------------------------------------------------------------- adapters
def adapter_to_records(adapter: Mapping[str, LoraFactors]) -> tuple[ArrayRecord, ConfigRecord]:
    """``(arrays, meta)``: ``<module>/A``, ``<module>/B`` arrays, and the alphas as JSON."""
    arrays = ArrayRecord()
    for module in sorted(adapter):
        arrays[f"{module}/A"] = tensor_to_array(adapter[module].A)
        arrays[f"{module}/B"] = tensor_to_array(adapter[module].B)
    alphas = {m: float(adapter[m].alpha) for m in sorted(adapter)}
    return arrays, ConfigRecord({"alphas": json.dumps(alphas)})


def records_to_adapter(arrays: ArrayRecord, meta: ConfigRecord, where: str) -> Adapter:
    """Inverse of :func:`adapter_to_records`; every module needs ``A``, ``B`` and an alpha."""
    alphas = _json_field(meta, "alphas", dict, where)
    modules = {key.rsplit("/", 1)[0] for key in arrays.keys()}
    expected = {f"{m}/{side}" for m in modules for side in ("A", "B")}
    if set(arrays.keys()) != expected or set(alphas) != modules:
        odd = sorted(set(arrays.keys()) ^ expected)[:3] or sorted(set(alphas) ^ modules)[:3]
        raise MalformedMessageError(f"{where}: arrays and alphas do not pair up as <module>/A, <module>/B (e.g. {odd})")
    out: Adapter = {}
    for m in sorted(modules):
        alpha = alphas[m]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise MalformedMessageError(f"{where}: alpha of {m!r} is {alpha!r}, not a number")
        A = array_to_tensor(arrays[f"{m}/A"], f"{where} {m}/A")
        B = array_to_tensor(arrays[f"{m}/B"], f"{where} {m}/B")
        out[m] = LoraFactors(A, B, float(alpha))
    return out


# ---------------------------------------------------------------- payloads
@dataclass(frozen=True)
class TrainInstruction:
    """A decoded train message: the payload, the round, and the client's seed for this round."""

    payload: Payload
    server_round: int
    client_seed: int


def payload_to_content(payload: Payload, *, server_round: int, client_seed: int = 0) -> RecordDict:
    """The train instruction for one client: its plan, starting factors, settings and seed."""
    init_arrays, init_meta = adapter_to_records(payload.init)
    config = ConfigRecord(
        {
            "server_round": int(server_round),
            "client_seed": int(client_seed),
            "plan": json.dumps(payload.plan.to_dict(), sort_keys=True),
            "seed": int(payload.seed),
            "train_A": bool(payload.train_A),
            "train_B": bool(payload.train_B),
            "base_delta_version": int(payload.base_delta_version),
            "options": json.dumps(payload.options, sort_keys=True),
        }
    )
    content = RecordDict({PAYLOAD: config, INIT: init_arrays, f"{INIT}.meta": init_meta})
    if payload.base_delta is not None:
        base_arrays, base_meta = adapter_to_records(payload.base_delta)
        content[BASE] = base_arrays
        content[f"{BASE}.meta"] = base_meta
    return content


def content_to_payload(content: RecordDict) -> TrainInstruction:
    """The train instruction built by :func:`payload_to_content`."""
    config = _config(content, PAYLOAD)
    try:
        plan = ClientPlan.from_dict(_json_field(config, "plan", dict, PAYLOAD))
    except (KeyError, TypeError, ValueError) as err:
        raise MalformedMessageError(f"{PAYLOAD}: bad plan ({err})") from None
    init = records_to_adapter(_arrays(content, INIT), _config(content, f"{INIT}.meta"), INIT)
    base = None
    if BASE in content.array_records:
        base = records_to_adapter(_arrays(content, BASE), _config(content, f"{BASE}.meta"), BASE)
    payload = Payload(
        plan=plan,
        init=init,
        seed=int(_field(config, "seed", int, PAYLOAD)),
        train_A=bool(_field(config, "train_A", bool, PAYLOAD)),
        train_B=bool(_field(config, "train_B", bool, PAYLOAD)),
        base_delta=base,
        base_delta_version=int(_field(config, "base_delta_version", int, PAYLOAD)),
        options=_json_field(config, "options", dict, PAYLOAD),
    )
    return TrainInstruction(payload, int(_field(config, "server_round", int, PAYLOAD)), int(_field(config, "client_seed", int, PAYLOAD)))


# ---------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalInstruction:
    """A decoded evaluate message: the global adapter, the round, and this node's shard
    (``shard`` of ``num_shards``) of the federation's shared evaluation sets."""

    adapter: Adapter
    server_round: int
    shard: int
    num_shards: int


def global_to_content(adapter: Mapping[str, LoraFactors], *, server_round: int, shard: int = 0, num_shards: int = 1) -> RecordDict:
    """The evaluate instruction: the global adapter (relative to the original base weights)."""
    arrays, meta = adapter_to_records(adapter)
    meta.update({"server_round": int(server_round), "shard": int(shard), "num_shards": int(num_shards)})
    return RecordDict({GLOBAL: arrays, f"{GLOBAL}.meta": meta})


def content_to_global(content: RecordDict) -> EvalInstruction:
    """The :class:`EvalInstruction` of :func:`global_to_content`."""
    where = f"{GLOBAL}.meta"
    meta = _config(content, where)
    adapter = records_to_adapter(_arrays(content, GLOBAL), meta, GLOBAL)
    shard, num = (int(_field(meta, k, int, where)) for k in ("shard", "num_shards"))
    if not 0 <= shard < num:
        raise MalformedMessageError(f"{where}: shard {shard} of {num} is out of range")
    return EvalInstruction(adapter, int(_field(meta, "server_round", int, where)), shard, num)


# ---------------------------------------------------------------- updates
def update_to_content(update: Update) -> RecordDict:
    """A client's reply: its factors, alphas, example count and local metrics."""
    arrays, meta = adapter_to_records(update.factors)
    meta["num_examples"] = int(update.num_examples)
    return RecordDict({UPDATE: arrays, f"{UPDATE}.meta": meta, METRICS: metrics_to_record(update.metrics)})


def content_to_update(content: RecordDict, client_id: str) -> Update:
    """The :class:`Update` in a reply; ``client_id`` is the server's name for the sender.

    The server names the client from the node that replied, never from the reply's content,
    so a node cannot answer for another. Shapes, ranks and values are checked later by the
    strategy's validation (``RoundResult.rejected``); this only checks the structure.
    """
    meta = _config(content, f"{UPDATE}.meta")
    factors = records_to_adapter(_arrays(content, UPDATE), meta, UPDATE)
    num_examples = _field(meta, "num_examples", int, f"{UPDATE}.meta")
    metrics = record_to_metrics(content.metric_records.get(METRICS, MetricRecord()))
    return Update(client_id=client_id, factors=factors, num_examples=int(num_examples), metrics=metrics)


def metrics_to_record(metrics: Mapping[str, Any]) -> MetricRecord:
    """Finite int/float metrics as a ``MetricRecord`` (others are dropped: Flower cannot carry them)."""
    clean = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        clean[str(key)] = value
    return MetricRecord(clean)


def record_to_metrics(record: MetricRecord) -> dict[str, float]:
    """Scalar metrics of a ``MetricRecord`` as floats (lists are dropped)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------- helpers
def _config(content: RecordDict, key: str) -> ConfigRecord:
    record = content.config_records.get(key)
    if record is None:
        raise MalformedMessageError(f"missing config record {key!r} (has {sorted(content.keys())})")
    return record


def _arrays(content: RecordDict, key: str) -> ArrayRecord:
    record = content.array_records.get(key)
    if record is None:
        raise MalformedMessageError(f"missing array record {key!r} (has {sorted(content.keys())})")
    return record


def _field(record: ConfigRecord, key: str, kind: type, where: str) -> Any:
    if key not in record:
        raise MalformedMessageError(f"{where}: missing field {key!r}")
    value = record[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MalformedMessageError(f"{where}: field {key!r} is {value!r}, expected an int")
    if kind is not int and not isinstance(value, kind):
        raise MalformedMessageError(f"{where}: field {key!r} is {value!r}, expected {kind.__name__}")
    return value


def _json_field(record: ConfigRecord, key: str, kind: type, where: str) -> Any:
    text = _field(record, key, str, where)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedMessageError(f"{where}: field {key!r} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise MalformedMessageError(f"{where}: field {key!r} decodes to {type(value).__name__}, expected {kind.__name__}")
    return value

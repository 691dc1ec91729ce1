"""Clients of a round trained in lockstep: one forward and backward of the shared frozen base over
all their batches at once, each row routed through its own client's LoRA factors.

Client ``c`` (plan, factors, optimizer, batch schedule and rules of its own) contributes the rows
``[start_c, stop_c)`` of every step's batch; a target module computes ``base(x)`` on all rows once and
adds ``s_c B_c A_c x`` on client ``c``'s rows (clients without that module add nothing). The loss is
``Σ_c L_c`` with ``L_c`` client ``c``'s mean answer-token loss (plus its rules' terms); client
parameters are disjoint, so each receives exactly its own gradient, and each client clips and
steps its own optimizer. The result equals training the clients one after another up to float
rounding (rows are padded to the longest sequence of the step; attention masks keep padding out):
bit for bit with an fp32 base on this project's CPU; with a bf16 base the batch's shape changes how
the base's bf16 activations round (the same rows' hidden states differ between a batch of 4 and one
of 8, as with any batching), and four Adam steps amplify that into updates ``B A`` that differ by up
to ~25% relative (the losses by ~0.1%), the same order as bf16 against fp32 training.

PEFT's mixed-adapter batches (``adapter_names``) refuse training mode, so the rows are routed here
by :class:`_Routed`, which computes PEFT's LoRA term (``B(A x)·s``, added to the base output in fp32
and cast back, as PEFT's ``Linear.forward``); the sequential trainer keeps PEFT's layers.

What it buys is hardware throughput on the frozen base (one large matrix product instead of one per
client). ``benchmarks/batching_gain.py`` measured no gain from larger batches on this project's
2-core CPU; it is meant for GPUs. Cases it does not cover (:func:`lockstep_unsupported`) train
sequentially.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from fedlora.client.peft_bridge import ADAPTER_NAME, split_path
from fedlora.client.rules import RuleBase, client_rules, total_penalty
from fedlora.client.step import batch_schedule, make_optimizer, training_mode
from fedlora.data.formatting import IGNORE_INDEX, collate
from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies.base import Payload

__all__ = ["lockstep_unsupported", "train_lockstep"]


class _ClientFactors(torch.nn.Module):
    """One client's factors of one module, shaped like a PEFT LoRA layer for the rules
    (``layer.lora_A[ADAPTER_NAME].weight``)."""

    def __init__(self, f: LoraFactors, train_A: bool, train_B: bool) -> None:
        super().__init__()
        self.lora_A = torch.nn.ModuleDict({ADAPTER_NAME: torch.nn.Linear(f.d_in, f.rank, bias=False)})
        self.lora_B = torch.nn.ModuleDict({ADAPTER_NAME: torch.nn.Linear(f.rank, f.d_out, bias=False)})
        self.lora_A[ADAPTER_NAME].weight = torch.nn.Parameter(f.A.detach().to(torch.float32).clone(), requires_grad=train_A)
        self.lora_B[ADAPTER_NAME].weight = torch.nn.Parameter(f.B.detach().to(torch.float32).clone(), requires_grad=train_B)
        self.scale = f.scale

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.lora_A[ADAPTER_NAME].weight, self.lora_B[ADAPTER_NAME].weight
        return (x.to(A.dtype) @ A.T @ B.T) * self.scale


class _Routed(torch.nn.Module):
    """A frozen base linear plus per-client LoRA on each client's rows (``rows`` is shared and set per step)."""

    def __init__(self, base: torch.nn.Module, clients: dict[int, _ClientFactors], rows: list[tuple[int, int]]) -> None:
        super().__init__()
        self.base, self.clients, self.rows = base, clients, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        parts = []
        for c, (start, stop) in enumerate(self.rows):
            part = y[start:stop]
            f = self.clients.get(c)
            parts.append(part if f is None else (part + f.delta(x[start:stop])).to(y.dtype))  # add in fp32, as PEFT
        return torch.cat(parts, dim=0)


def lockstep_unsupported(trainer: Any, payloads: Sequence[Payload]) -> str | None:
    """Why these payloads cannot train in lockstep on ``trainer`` (``None``: they can)."""
    cfg = trainer.config
    if len(payloads) < 2:
        return "fewer than two clients"
    if any(not p.plan.trainable_modules or not (p.train_A or p.train_B) for p in payloads):
        return "a client has nothing to train"
    if cfg.dropout > 0 or cfg.grad_checkpointing:
        return "LoRA dropout and gradient checkpointing need per-client passes"
    keys = {(p.base_delta_version if p.base_delta else None) for p in payloads}
    if len(keys) > 1:
        return "clients were sent different base deltas"
    if any(p.options.get("submodel_layers") is not None for p in payloads):
        return "sub-model training (FedRA) runs different layers per client"
    if any(type(r).select is not RuleBase.select for p in payloads for r in client_rules(p.options)):
        return "a client-side rule chooses its modules from a local scoring pass"
    model = trainer.model
    if not (hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings")):
        return "the model has no separate decoder and LM head"
    return None


def train_lockstep(trainer: Any, jobs: Sequence[tuple[Payload, Sequence, int]], *, steps: int | None = None,
                   on_step: Callable[[float], None] | None = None) -> list[Update]:  # fmt: skip
    """Train ``jobs`` (payload, examples, client seed) together; the updates equal ``trainer.train`` of each.

    Raises ValueError naming the reason when :func:`lockstep_unsupported` does.
    """
    payloads = [p for p, _, _ in jobs]
    reason = lockstep_unsupported(trainer, payloads)
    if reason:
        raise ValueError(f"lockstep training is not possible here: {reason}; train these clients sequentially")
    start, cfg, model = time.perf_counter(), trainer.config, trainer.model
    steps = steps or cfg.local_steps
    data = [trainer.encode(examples, p.plan.client_id) for p, examples, _ in jobs]
    first = payloads[0]
    trainer.base.apply(first.base_delta, ("version", first.base_delta_version) if first.base_delta else None)
    initial = [trainer.initial_factors(p) for p in payloads]
    rules = [client_rules(p.options) for p in payloads]
    shims = [{m: _ClientFactors(initial[c][m], p.train_A and m in p.plan.trainable_modules, p.train_B and m in p.plan.trainable_modules)
              for m in p.plan.ranks} for c, p in enumerate(payloads)]  # fmt: skip
    params = [[w for m in sorted(p.plan.trainable_modules) for w in shims[c][m].parameters() if w.requires_grad] for c, p in enumerate(payloads)]
    optimizers = [make_optimizer(cfg, ps) for ps in params]
    schedules = [batch_schedule(len(d), cfg.batch_size, steps, torch.Generator().manual_seed(seed),
                                [len(x["input_ids"]) for x in d] if cfg.group_by_length else None)
                 for d, (_, _, seed) in zip(data, jobs)]  # fmt: skip
    rows: list[tuple[int, int]] = []
    originals = {}
    device = trainer.device
    with trainer.guard():
        try:
            for m in sorted({m for p in payloads for m in p.plan.ranks}):
                parent_path, child = split_path(m)
                parent = model.get_submodule(parent_path) if parent_path else model
                originals[m] = (parent, child, getattr(parent, child))
                routed = {c: shims[c][m].to(device) for c, p in enumerate(payloads) if m in p.plan.ranks}
                setattr(parent, child, _Routed(originals[m][2], routed, rows))
            losses = [[] for _ in jobs]
            penalties = [[] for _ in jobs]
            with training_mode(model, False):
                for step in range(steps):
                    items, rows[:] = [], []
                    for c, d in enumerate(data):
                        idx = schedules[c][step]
                        rows.append((len(items), len(items) + len(idx)))
                        items.extend(d[i] for i in idx)
                    batch = {k: v.to(device) for k, v in collate(items, trainer.tokenizer.pad_token_id).items()}
                    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
                    head, targets = model.get_output_embeddings(), batch["labels"][:, 1:]
                    total = None
                    for c, (lo, hi) in enumerate(rows):
                        keep = targets[lo:hi] != IGNORE_INDEX
                        loss = torch.nn.functional.cross_entropy(head(hidden[lo:hi, :-1][keep]).float(), targets[lo:hi][keep])
                        if on_step is not None:
                            on_step(float(loss.detach()))
                        modules = sorted(payloads[c].plan.trainable_modules)
                        penalty = total_penalty(rules[c], shims[c], modules, initial[c]) if rules[c] else None
                        if penalty is not None:
                            penalties[c].append(float(penalty.detach()))
                            loss = loss + penalty
                        losses[c].append(float(loss.detach()))
                        total = loss if total is None else total + loss
                    total.backward()
                    for ps, opt in zip(params, optimizers):
                        if cfg.grad_clip:
                            torch.nn.utils.clip_grad_norm_(ps, cfg.grad_clip)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
        finally:
            for parent, child, original in originals.values():
                setattr(parent, child, original)
    seconds = time.perf_counter() - start
    updates = []
    for c, p in enumerate(payloads):
        trained = {m: LoraFactors(shims[c][m].lora_A[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone(),
                                  shims[c][m].lora_B[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone(), initial[c][m].alpha)
                   for m in sorted(p.plan.trainable_modules)}  # fmt: skip
        for rule in rules[c]:
            trained = rule.finish(trained, initial[c])
        ls = losses[c]
        metrics = {"train_loss": sum(ls) / len(ls), "train_loss_first": ls[0], "train_loss_last": ls[-1], "steps": float(len(ls)),
                   "seconds": seconds / len(jobs), "setup_seconds": 0.0, "lockstep_clients": float(len(jobs))}  # fmt: skip
        if penalties[c]:
            metrics["train_penalty"] = sum(penalties[c]) / len(penalties[c])
        updates.append(Update(p.plan.client_id, trained, len(jobs[c][1]), metrics))
    return updates

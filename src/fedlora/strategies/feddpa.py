"""FedDPA (Yang et al., "Dual-Personalizing Adapter for Federated Foundation Models", NeurIPS 2024).

Each client trains two adapters on every module: a **global** one that the server aggregates
(FedAvg) and a **personal** one that never leaves the client. fedlora trains both as one LoRA of
rank ``r_k = g + p_k``, the first ``g`` components global and the rest personal, which is exact:
``s [B_g, B_p] [A_g; A_p] = s B_g A_g + s B_p A_p``. The server averages the global part,
``Ā_g = Σ_k p_k A_k[:g]``, ``B̄_g = Σ_k p_k s_k B_k[:, :g]``, and keeps ``(A_k[g:], B_k[:, g:])`` in
the client's :class:`~fedlora.strategies.personal_store.PersonalStore`. Inference combines the two
adapters with equal weights (the paper's instance-wise dynamic weighting is not implemented).

Heterogeneous ranks: supported. ``g = global_rank`` is common to all (every client's plan rank must
be at least ``g``); a larger client gets a larger personal adapter, ``p_k = r_k - g``. A client of
rank ``g`` has no personal part. Evaluation: the global model ``B̄_g Ā_g`` and, in the engine's
``personal`` split, each client's global + personal model on its own tasks.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.compose import padded_average
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.personal_store import PersonalStore

__all__ = ["FedDPA"]


class FedDPA:
    """Global adapter (aggregated) plus personal adapter (kept per client), trained as one LoRA.

    Args:
        seed: seed of the shared fresh init.
        global_rank: rank ``g`` of the global adapter; every client's rank must be at least ``g``
            (0: the smallest rank planned in round 1, at least 1).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "feddpa"
    heterogeneous_ranks = True

    def __init__(self, *, seed: int = 0, global_rank: int = 0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        if global_rank < 0:
            raise ValueError(f"FedDPA: global_rank must be >= 0 (0: the smallest planned rank), got {global_rank}")
        self.seed, self.global_rank = int(seed), int(global_rank)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self.personal = PersonalStore()
        self._book = C.RoundBook()

    def attach_client_store(self, folder: str | os.PathLike, keep: int = 3) -> None:
        """Keep every client's personal adapter in ``folder`` (the engine calls this)."""
        self.personal.attach(folder, keep)

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        if self.global_rank == 0:
            self.global_rank = max(1, min((int(r) for p in plans for r in p.ranks.values()), default=1))
        small = [(p.client_id, m, r) for p in plans for m, r in p.ranks.items() if int(r) < self.global_rank]
        if small:
            cid, m, r = small[0]
            raise ValueError(f"FedDPA: client {cid!r} has rank {r} on {m!r}, below the global adapter's rank {self.global_rank}; "
                             "give every client at least global_rank, or lower strategy.global_rank")  # fmt: skip
        plans_by_id = self._book.start(server_round, plans, "FedDPA")
        return {cid: Payload(p, init=self._init_for(p), seed=self.seed) for cid, p in plans_by_id.items()}

    def _init_for(self, plan: ClientPlan) -> Adapter:
        """``[A_g; A_p]``, ``[B_g, B_p]`` at the plan's alpha (personal part zero-B fresh rows when new)."""
        own = self.personal.get(plan.client_id) or {}
        init, g = {}, self.global_rank
        for m, r in plan.ranks.items():
            if m not in self._global:
                continue  # never aggregated: the trainer's shared fresh init
            r, s = int(r), float(plan.alphas[m]) / int(r)
            glob = self._global[m]
            mine = own.get(m)
            if mine is not None and mine.rank == r - g:
                A_p, B_p = mine.A, mine.B * (mine.scale / s)
            else:  # no personal part yet (or the rank changed): fresh A rows, zero B
                from fedlora.lora.linalg import init_lora_factors

                fresh = init_lora_factors(glob.d_out, glob.d_in, r, 1.0, self.seed, m)
                A_p, B_p = fresh.A[g:], torch.zeros(glob.d_out, r - g)
            A = torch.cat([glob.A, A_p], dim=0)
            B = torch.cat([glob.B * (glob.scale / s), B_p], dim=1)
            init[m] = LoraFactors(A.contiguous(), B.contiguous(), float(plan.alphas[m]))
        return init

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        valid, rejected = C.validate_round(self._book, server_round, updates, "FedDPA", shapes, exact_rank=True)
        g, new = self.global_rank, dict(self._global)
        for module, group in C.by_module(valid, self._book.plans).items():
            heads = [LoraFactors(f.A[:g], f.B[:, :g], f.scale * g) for _, f in group]  # the global components, same scale
            new[module] = padded_average(heads, C.example_weights(group), g)
        for u in valid:
            mine = {m: LoraFactors(f.A[g:].clone(), f.B[:, g:].clone(), f.scale * (f.rank - g)) for m, f in u.factors.items() if f.rank > g}
            self.personal.put(u.client_id, {**(self.personal.get(u.client_id) or {}), **mine}, server_round)
        self._global = new
        self._shapes.update({m: shapes[m] for m in new})
        return RoundResult([u.client_id for u in valid], rejected, C.round_metrics(valid, rejected))

    def global_adapter(self) -> Adapter:
        """The global adapter ``B̄_g Ā_g``, ``alpha = g`` (scale 1)."""
        return dict(self._global)

    def personal_adapters(self) -> Iterator[tuple[str, Adapter]]:
        """``(client, global + personal)`` as one adapter of rank ``g + p_k`` (scale 1), one client at a time."""
        for cid, own in self.personal.items():
            out = {}
            for m, glob in self._global.items():
                mine = own.get(m)
                if mine is None:
                    out[m] = glob
                    continue
                A = torch.cat([glob.A, mine.A], dim=0)
                B = torch.cat([glob.B, mine.scale * mine.B], dim=1)
                out[m] = LoraFactors(A, B, float(A.shape[0]))
            yield cid, out

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "global_rank": self.global_rank, "global": C.adapter_to_state(self._global),
                "personal": self.personal.state_dict(), "shapes": C.shapes_to_state(self._shapes), "book": self._book.to_state()}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.seed, self.global_rank = int(state["seed"]), int(state["global_rank"])
        self._global = C.adapter_from_state(state["global"])
        self.personal.load_state_dict(state["personal"])
        self._shapes = C.normalize_shapes(state["shapes"])
        self._book = C.RoundBook.from_state(state["book"])

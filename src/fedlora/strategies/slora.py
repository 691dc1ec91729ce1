"""SLoRA (Babakniya, Elkordy, Ezzeldin, Liu, Song, El-Khamy, Avestimehr, "SLoRA: Federated Parameter
Efficient Fine-Tuning of Language Models", 2023).

Two stages. **Stage 1** (rounds ``1..T1``, ``sparse_rounds``): clients fine-tune a sparse part of the
full weights and the server averages it, accumulating ``ΔW_s = Σ_t ΔW_t``. **Stage 2**: LoRA at
rank ``r`` initialised from the SVD of the accumulated update, ``ΔW_s ≈ U_r S_r V_rᵀ``,
``B = U_r S_r^{1/2}``, ``A = S_r^{1/2} V_rᵀ``, on the original base weights (the stage-1 update lives
on only through its best rank-``r`` part, so the result is a plain LoRA adapter), then FedAvg of the
factors as FedIT. With too few stage-1 directions ``A`` grows with fresh-init rows.

fedlora's sparse stage uses a **row-structured** random mask: in round ``t`` every client trains the
same ``k_m = max(1, round(density · d_out))`` rows of module ``m``'s weight, drawn from
``(seed, t, m)``, expressed as a LoRA pair with a frozen one-hot ``B = E_t [d_out, k]`` and a trainable
``A [k, d_in]`` (initialised to 0), so ``E_t A`` is exactly the update of those rows. Because ``E_t`` is
shared, the average ``E_t Σ_k p_k A_k`` is exact. Earlier stage-1 rounds are merged into each client's
base (``payload.base_delta``), so the sparse fine-tuning continues across rounds. The paper uses an
unstructured random mask; rows keep stage 1 on the same client, wire, validation, privacy and
guard code as every other method (an unstructured mask would need a second update type), and
re-drawing them every round lets ``ΔW_s`` reach rank ``T1 · k``.

Heterogeneous ranks: no in stage 2 (FedIT's average needs one rank); stage 1 is rank-free.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import extend_rank, rescale_alpha, svd_of_weighted_sum
from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.base import Payload, RoundResult
from fedlora.strategies.fedit import fedavg_factors
from fedlora.strategies.flora import merge_stacked

__all__ = ["SLoRA", "row_selector", "svd_init"]


def row_selector(d_out: int, k: int, seed: int) -> torch.Tensor:
    """``E [d_out, k]`` with ``E[rows[i], i] = 1`` for ``k`` distinct random rows (sorted) seeded by ``seed``."""
    rows = sorted(random.Random(seed).sample(range(d_out), k))
    E = torch.zeros(d_out, k)
    E[rows, torch.arange(k)] = 1.0
    return E


def svd_init(f: LoraFactors, rank: int, seed: int, module: str) -> LoraFactors:
    """``B = U_r S_r^{1/2}``, ``A = S_r^{1/2} V_rᵀ`` of ``s B A`` (scale 1), grown with fresh ``A`` rows to ``rank``."""
    U, S, Vh = svd_of_weighted_sum([f.B], [f.A], [f.scale])
    k = min(int(rank), int(S.shape[0]))
    root = S[:k].sqrt()
    head = LoraFactors((root[:, None] * Vh[:k]).to(C.STATE_DTYPE), (U[:, :k] * root).to(C.STATE_DTYPE), float(k))
    return extend_rank(head, int(rank), seed, module) if k < rank else head


class SLoRA:
    """Sparse stage (shared random rows, exact average), then LoRA from its SVD with FedAvg.

    Args:
        seed: seed of the row draws and of fresh ``A`` rows.
        sparse_rounds: ``T1``, rounds of the sparse stage (0: plain FedIT).
        density: share of each weight's rows trained per sparse round, in (0, 1].
        shapes: module -> ``(d_out, d_in)`` (or a ModelSpec); the sparse stage needs ``d_out``.
    """

    name = "slora"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, sparse_rounds: int = 1, density: float = 0.05,
                 shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:  # fmt: skip
        if int(sparse_rounds) < 0 or not 0 < float(density) <= 1:
            raise ValueError(f"SLoRA: sparse_rounds must be >= 0 and density in (0, 1]; got {sparse_rounds}, {density}")
        self.seed, self.sparse_rounds, self.density = int(seed), int(sparse_rounds), float(density)
        self._shapes: C.Shapes = C.normalize_shapes(shapes)
        self._global: Adapter = {}
        self._sparse: Adapter = {}
        self._lora_ranks: dict[str, int] = {}
        self._book = C.RoundBook()

    def selector(self, server_round: int, module: str) -> torch.Tensor:
        """The shared one-hot ``E_t`` of ``module`` in sparse round ``server_round``."""
        if module not in self._shapes:
            raise ValueError(f"SLoRA needs the shape of {module!r} for its sparse stage; build it with shapes= (a ModelSpec)")
        d_out = self._shapes[module][0]
        return row_selector(d_out, max(1, min(d_out, round(self.density * d_out))), C.derive_seed(self.seed, "slora", server_round, module))

    def configure(self, server_round: int, plans: Sequence[ClientPlan]) -> dict[str, Payload]:
        ranks = C.homogeneous_ranks(plans, {m: f.rank for m, f in self._global.items()} | self._lora_ranks, "SLoRA")
        if server_round > self.sparse_rounds:
            plans_by_id = self._book.start(server_round, plans, "SLoRA")
            return {cid: Payload(p, init={m: rescale_alpha(self._global[m], p.alphas[m]) for m in p.ranks if m in self._global}, seed=self.seed)
                    for cid, p in plans_by_id.items()}  # fmt: skip
        self._lora_ranks.update(ranks)  # the LoRA ranks of stage 2, for the SVD at the end of stage 1
        rows = {m: self.selector(server_round, m).shape[1] for p in plans for m in p.ranks}
        sparse_plans = [ClientPlan(p.client_id, {m: rows[m] for m in p.ranks}, {m: float(rows[m]) for m in p.ranks}, p.trainable) for p in plans]
        plans_by_id = self._book.start(server_round, sparse_plans, "SLoRA")
        return {cid: Payload(p, init={m: self._sparse_start(server_round, m) for m in p.ranks}, seed=self.seed, train_B=False,
                             base_delta=dict(self._sparse) or None, base_delta_version=server_round)
                for cid, p in plans_by_id.items()}  # fmt: skip

    def _sparse_start(self, server_round: int, module: str) -> LoraFactors:
        E = self.selector(server_round, module)
        return LoraFactors(torch.zeros(E.shape[1], self._shapes[module][1]), E, float(E.shape[1]))

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        shapes = C.round_shapes(self._shapes, updates)
        sparse = server_round <= self.sparse_rounds
        checks: dict[str, Any] = {"exact_rank": True}
        if sparse:
            checks |= {"train_B": False, "expected_B": {m: self.selector(server_round, m) for p in self._book.plans.values() for m in p.ranks}}
        valid, rejected = C.validate_round(self._book, server_round, updates, "SLoRA", shapes, **checks)
        target = dict(self._sparse if sparse else self._global)
        for module, group in C.by_module(valid, self._book.plans).items():
            avg = fedavg_factors([f for _, f in group], C.example_weights(group))
            target[module] = merge_stacked(target.get(module), avg) if sparse else avg
        if sparse:
            self._sparse = target
            if server_round == self.sparse_rounds:  # end of stage 1: LoRA from the SVD of the accumulated update
                self._global = {m: svd_init(f, self._lora_ranks[m], self.seed, m) for m, f in target.items() if m in self._lora_ranks}
        else:
            self._global = target
        self._shapes.update({m: shapes[m] for m in target})
        metrics = C.round_metrics(valid, rejected) | {"sparse_stage": float(sparse)}
        return RoundResult([u.client_id for u in valid], rejected, metrics)

    def global_adapter(self) -> Adapter:
        """Stage 1: the accumulated sparse update as stacked factors; then ``(A, B)`` at scale 1 (from the
        end of stage 1 on, the best rank-``r`` part of that update before any LoRA round)."""
        return dict(self._global) if self._global else dict(self._sparse)

    def state_dict(self) -> dict[str, Any]:
        return C.global_state(self) | {"sparse": C.adapter_to_state(self._sparse), "sparse_rounds": self.sparse_rounds, "density": self.density,
                                       "lora_ranks": dict(self._lora_ranks)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.load_global_state(self, state)
        self._sparse = C.adapter_from_state(state["sparse"])
        self.sparse_rounds, self.density = int(state["sparse_rounds"]), float(state["density"])
        self._lora_ranks = {m: int(r) for m, r in state["lora_ranks"].items()}

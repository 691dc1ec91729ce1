"""Client-level differential privacy for the averaging methods: DP-FedAvg on the LoRA factors.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018),
applied to what the wrapped method averages. Client ``k``'s update relative to the factors it was
sent is ``Δ_k = (A_k - A_0, s_k B_k - s_0 B_0)`` over every trained module (FFA-LoRA: ``B`` only, ``A``
is frozen); it is clipped to ``||Δ_k||_2 <= C`` (``C = clip_norm``) and the clipped updates are
averaged with equal weights (example counts would leak); Gaussian noise ``N(0, (σ C / n)^2)`` per
coordinate (``σ = noise_multiplier``, ``n`` updates aggregated) is added to the averaged factors.

Privacy spent is tracked with Google's ``dp-accounting`` (RDP accountant, 22 integer orders from 2 to 256):
with ``m`` of ``N`` clients sampled per round (fixed size, without replacement) each round is a
``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(σ / 2))`` under replace-one adjacency
(replacing one client moves the clipped sum by up to ``2C``); with every client in every round, a
``GaussianDpEvent(σ)`` under add-or-remove adjacency (sensitivity ``C``). ``privacy/epsilon`` at
``delta`` is reported in the round's metrics. Noise 0
reports ``epsilon = inf``; noise 0 with a clip bound that no update reaches equals the plain method
with equal weights.

Supported: FedIT and FFA-LoRA, whose server averages factors. Not supported: FlexLoRA and HetLoRA
(the server takes an SVD of / truncates individual clients' factors, so one client's contribution to
what is released is not a clipped sum), FLoRA (stacks individual factors into the base), Fed-pilot
(per-module averages over different client subsets: the sensitivity differs per module) and local.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from fedlora.lora.factors import Adapter, LoraFactors, Update
from fedlora.lora.linalg import init_lora_factors, rescale_alpha
from fedlora.strategies.base import Payload, RoundResult

__all__ = ["DP_METHODS", "DPFedAvg", "clip_update", "epsilon_spent"]

DP_METHODS = ("fedit", "ffa")
_ORDERS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256)


def epsilon_spent(rounds: int, *, population: int, per_round: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon after ``rounds`` rounds of sampling ``per_round`` of ``population`` clients (RDP, dp-accounting)."""
    if noise_multiplier <= 0:
        return math.inf
    if rounds == 0:
        return 0.0
    import dp_accounting as dpa
    from dp_accounting import rdp

    if per_round < population:  # fixed-size sampling: replace-one adjacency, where the sum's sensitivity is 2C
        event = dpa.SampledWithoutReplacementDpEvent(population, per_round, dpa.GaussianDpEvent(noise_multiplier / 2))
        accountant = rdp.RdpAccountant(list(_ORDERS), dpa.NeighboringRelation.REPLACE_ONE)
    else:  # every client every round: add-or-remove adjacency, sensitivity C
        event = dpa.GaussianDpEvent(noise_multiplier)
        accountant = rdp.RdpAccountant(list(_ORDERS))
    accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def clip_update(update: Adapter, start: Adapter, clip_norm: float, *, train_A: bool) -> tuple[Adapter, float]:
    """``start + min(1, C / ||Δ||) Δ`` in the averaged coordinates ``(A, s B)``; also the norm of ``Δ``."""
    deltas = {}
    for m, f in update.items():
        s0 = start[m]
        dA = (f.A.double() - s0.A.double()) if train_A else torch.zeros_like(f.A, dtype=torch.float64)
        dB = f.scale * f.B.double() - s0.scale * s0.B.double()
        deltas[m] = (dA, dB)
    norm = math.sqrt(sum(float(dA.square().sum() + dB.square().sum()) for dA, dB in deltas.values()))
    factor = 1.0 if norm <= clip_norm or norm == 0 else clip_norm / norm
    out = {}
    for m, (dA, dB) in deltas.items():
        s0, f = start[m], update[m]
        A = s0.A.double() + factor * dA
        B = (s0.scale * s0.B.double() + factor * dB) / f.scale
        out[m] = LoraFactors(A.to(f.A.dtype), B.to(f.B.dtype), f.alpha)
    return out, norm


class DPFedAvg:
    """Wrap a FedIT or FFA-LoRA strategy with client-level DP (module docstring).

    Args:
        inner: the strategy (``name`` in :data:`DP_METHODS`).
        clip_norm: ``C``, the L2 bound of each client's update. noise_multiplier: ``σ`` (0: no noise).
        population: clients in the federation ``N``. per_round: clients sampled per round ``m``.
        delta: the ``δ`` of the reported ``(ε, δ)``. seed: seeds the noise (per round).
    """

    def __init__(self, inner: Any, *, clip_norm: float, noise_multiplier: float, population: int, per_round: int,
                 delta: float = 1e-5, seed: int = 0) -> None:  # fmt: skip
        if inner.name not in DP_METHODS:
            raise ValueError(f"differential privacy is implemented for {', '.join(DP_METHODS)}, not {inner.name!r}: its "
                             "server does not release a clipped sum of client updates (see fedlora.strategies.dp)")  # fmt: skip
        if not clip_norm > 0 or noise_multiplier < 0 or not 0 < delta < 1:
            raise ValueError(f"need clip_norm > 0, noise_multiplier >= 0 and 0 < delta < 1; got {clip_norm}, {noise_multiplier}, {delta}")
        self.inner, self.name, self.heterogeneous_ranks = inner, inner.name, False
        self.clip_norm, self.noise_multiplier, self.delta = float(clip_norm), float(noise_multiplier), float(delta)
        self.population, self.per_round, self.seed = int(population), int(per_round), int(seed)
        self.rounds_done = 0
        self._starts: dict[str, tuple[Payload, Adapter]] = {}

    def configure(self, server_round: int, plans: Sequence[Any]) -> dict[str, Payload]:
        payloads = self.inner.configure(server_round, plans)
        self._starts = {cid: p for cid, p in payloads.items()}
        return payloads

    def _start(self, payload: Payload, module: str, like: LoraFactors) -> LoraFactors:
        f = payload.init.get(module)
        if f is None:  # a fresh module: the trainer starts from the seeded shared init
            f = init_lora_factors(like.d_out, like.d_in, payload.plan.ranks[module], payload.plan.alphas[module], payload.seed, module)
        return rescale_alpha(f, payload.plan.alphas[module]) if float(f.alpha) != float(payload.plan.alphas[module]) else f

    def aggregate(self, server_round: int, updates: Sequence[Update]) -> RoundResult:
        clipped, norms = [], []
        for u in updates:
            payload = self._starts.get(u.client_id)
            factors = dict(u.factors)
            if payload is not None and all(isinstance(f, LoraFactors) and isinstance(f.A, torch.Tensor) for f in factors.values()):
                try:
                    start = {m: self._start(payload, m, f) for m, f in factors.items()}
                    factors, norm = clip_update(factors, start, self.clip_norm, train_A=payload.train_A)
                    norms.append(norm)
                except (KeyError, RuntimeError, ValueError):
                    pass  # malformed: the inner strategy's validation rejects it with the reason
            clipped.append(Update(u.client_id, factors, 1, dict(u.metrics)))  # equal weights
        result = self.inner.aggregate(server_round, clipped)
        if result.accepted and self.noise_multiplier > 0:
            self._add_noise(server_round, len(result.accepted))
        self.rounds_done += 1
        result.metrics["privacy/epsilon"] = self.epsilon()
        result.metrics["privacy/delta"] = self.delta
        if norms:
            result.metrics["privacy/clipped_fraction"] = sum(n > self.clip_norm for n in norms) / len(norms)
        return result

    def _add_noise(self, server_round: int, n: int) -> None:
        from fedlora.strategies._common import derive_seed

        state = self.inner.state_dict()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "dp-noise", server_round))
        std = self.noise_multiplier * self.clip_norm / n
        for m in sorted(state["global"]):
            d = state["global"][m]
            scale = float(d["alpha"]) / d["A"].shape[0]
            if self.name != "ffa":
                d["A"] = d["A"] + std * torch.randn(d["A"].shape, generator=gen, dtype=torch.float64).to(d["A"].dtype)
            d["B"] = d["B"] + (std / scale) * torch.randn(d["B"].shape, generator=gen, dtype=torch.float64).to(d["B"].dtype)
        self.inner.load_state_dict(state)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta``."""
        return epsilon_spent(self.rounds_done, population=self.population, per_round=self.per_round,
                             noise_multiplier=self.noise_multiplier, delta=self.delta)  # fmt: skip

    def global_adapter(self) -> Adapter:
        return self.inner.global_adapter()

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "dp_rounds_done": self.rounds_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        self.rounds_done = int(state.pop("dp_rounds_done", 0))
        self.inner.load_state_dict(state)

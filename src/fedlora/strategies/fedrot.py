"""FedRot-LoRA (Zhang, Kim, Cha, Vikalo, "FedRot-LoRA: Mitigating Rotational Misalignment in Federated
LoRA", ICML 2026; public code github.com/haoran-zh/FedRot-LoRA, read for the rule).

A LoRA update is invariant to rotations of its rank space, ``(B_k R)(Rᵀ A_k) = B_k A_k``, so clients
can represent similar updates in different coordinates and FedAvg of the factors (FedIT) then
averages them destructively. From round 2 on, each client rotates its trained factors toward the
factors it started the round from (the global ones) before sending them:
``R_k = argmin_{RᵀR = I} ||Rᵀ A_k − A⁰||_F`` (orthogonal Procrustes, ``R_k = U Vᵀ`` for
``A_k A⁰ᵀ = U S Vᵀ``), ``A_k' = R_kᵀ A_k``, ``B_k' = B_k R_k``; the aligning factor alternates, ``A`` in
even rounds and ``B`` (``Bᵀ_k B⁰``) in odd ones, as in the public code with ``initialshare = 'A'``
(:class:`fedlora.client.rules.RotationAlignment`). ``strength`` ``λ < 1`` is the paper's soft
alignment, ``(1 − λ) I + λ R`` re-orthogonalised. The server is FedIT: ``A = Σ p_k A_k'``,
``B = Σ p_k s_k B_k'``. Each client's own update ``B_k' A_k' = B_k A_k`` is unchanged.

Heterogeneous ranks: no (FedIT's average; ``R_k`` is ``r x r`` at the shared rank).
"""

from __future__ import annotations

from typing import Any, Mapping

from fedlora.modelspec import ModelSpec
from fedlora.strategies import _common as C
from fedlora.strategies.client_options import ClientOptionsOn
from fedlora.strategies.fedit import FedIT

__all__ = ["FedRotLoRA", "aligning_factor"]


def aligning_factor(server_round: int) -> str | None:
    """The factor clients align in ``server_round``: none in round 1, ``A`` in even rounds, ``B`` in odd ones."""
    return None if server_round <= 1 else ("A" if server_round % 2 == 0 else "B")


class FedRotLoRA(ClientOptionsOn):
    """FedIT with each client's factors rotated onto the round's starting factors before averaging.

    Args:
        seed: seed of the shared fresh init.
        strength: alignment strength ``λ`` (1: full orthogonal Procrustes; in (0, 1): soft).
        shapes: optional module -> ``(d_out, d_in)`` (or a ModelSpec) to check shapes from round 1.
    """

    name = "fedrot"
    heterogeneous_ranks = False

    def __init__(self, *, seed: int = 0, strength: float = 1.0, shapes: ModelSpec | Mapping[str, tuple[int, int]] | None = None) -> None:
        if not 0 < float(strength) <= 1:
            raise ValueError(f"FedRot-LoRA: strength must be in (0, 1], got {strength!r}")
        self.strength = float(strength)
        self.inner = FedIT(seed=seed, shapes=shapes)

    def client_options(self, server_round: int) -> dict[str, Any]:
        factor = aligning_factor(server_round)
        return {} if factor is None else {"rotation_align": factor, "rotation_strength": self.strength}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        self.strength = float(state["strength"])
        self.inner.load_state_dict(state["inner"])

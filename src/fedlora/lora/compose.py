"""Small pure primitives that federated LoRA methods are composed from (tensors in, tensors out).

Conventions (DESIGN.md section 2): client ``k`` sends ``A_k [r_k, d_in]``, ``B_k [d_out, r_k]`` with
scale ``s_k = alpha_k / r_k``; ``p_k`` are the aggregation weights (summing to 1). The ideal global
update is ``ΔW = Σ_k p_k s_k B_k A_k``. Server state keeps ``alpha = r`` (scale 1).

* :func:`padded_average`: ``A = Σ p_k pad(A_k)``, ``B = Σ p_k s_k pad(B_k)`` at a common rank (FedAvg
  when ranks are equal; HetLoRA-style zero padding otherwise).
* :func:`rowwise_average`: each row of ``A`` averaged over the clients that have it (ranks differ).
* :func:`stacked_residual`: ``Σ p_k s_k B_k A_k − B A`` as exact low-rank factors (FedEx-LoRA).
* :func:`orthonormal_refactor`: the same product ``B A`` re-factored as ``(U S) Vh`` (FedSVD).
* :func:`client_head`: the leading ``r_j`` components of a global adapter at client ``j``'s alpha,
  grown with fresh ``A`` rows when the global rank is smaller.
* :func:`refit_B`: the ``B`` that best reproduces ``Σ_k p_k s_k B_k A_k`` with a given ``A``, kept
  near a reference ``B`` (ridge least squares; LoRA-FAIR's server correction).
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedlora.lora.factors import LoraFactors
from fedlora.lora.linalg import extend_rank, svd_of_weighted_sum

__all__ = ["padded_average", "rowwise_average", "stacked_residual", "orthonormal_refactor", "client_head", "refit_B"]

_MATH = torch.float64


def padded_average(factors: Sequence[LoraFactors], weights: Sequence[float], rank: int,
                   out_dtype: torch.dtype = torch.float32) -> LoraFactors:  # fmt: skip
    """``A = Σ_k p_k [A_k; 0]``, ``B = Σ_k p_k s_k [B_k, 0]`` zero-padded to ``rank``; ``alpha = rank``.

    When every client shares one factor (the other was frozen and equal), the product of the result
    is exactly ``Σ p_k s_k B_k A_k``: ``[B_k, 0] A = B_k A[:r_k]``.
    """
    if not factors or len(factors) != len(weights):
        raise ValueError(f"padded_average needs one weight per factor pair; got {len(factors)} and {len(weights)}")
    if rank < max(f.rank for f in factors):
        raise ValueError(f"padded_average: rank {rank} is below a client's rank {max(f.rank for f in factors)}")
    d_out, d_in = factors[0].d_out, factors[0].d_in
    A = torch.zeros(rank, d_in, dtype=_MATH)
    B = torch.zeros(d_out, rank, dtype=_MATH)
    for f, w in zip(factors, weights):
        A[: f.rank] += float(w) * f.A.to(_MATH)
        B[:, : f.rank] += (float(w) * f.scale) * f.B.to(_MATH)
    return LoraFactors(A.to(out_dtype), B.to(out_dtype), float(rank))


def rowwise_average(As: Sequence[torch.Tensor], weights: Sequence[float], rank: int,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """``A[i] = Σ_{k: r_k > i} p_k A_k[i] / Σ_{k: r_k > i} p_k`` for ``i < rank``; rows no client has are 0.

    For a factor that is shared while its partner stays on each client (FedSA-LoRA's ``A``), a row
    is averaged over exactly the clients that trained it, so a small client does not pull the rows
    it never had toward zero. ``A_k [r_k, d_in]`` -> ``[rank, d_in]``.
    """
    if not As or len(As) != len(weights):
        raise ValueError(f"rowwise_average needs one weight per factor; got {len(As)} and {len(weights)}")
    total = torch.zeros(rank, As[0].shape[1], dtype=_MATH)
    mass = torch.zeros(rank, 1, dtype=_MATH)
    for A, w in zip(As, weights):
        r = min(int(A.shape[0]), rank)
        total[:r] += float(w) * A[:r].to(_MATH)
        mass[:r] += float(w)
    return (total / mass.clamp_min(torch.finfo(_MATH).tiny)).to(out_dtype)


def stacked_residual(factors: Sequence[LoraFactors], weights: Sequence[float], approx: LoraFactors,
                     out_dtype: torch.dtype = torch.float32) -> LoraFactors:  # fmt: skip
    """``R = Σ_k p_k s_k B_k A_k − s B A`` as factors of rank ``Σ r_k + r`` with ``alpha = rank`` (scale 1).

    ``B_R = [s_1 B_1, …, s_K B_K, −s B]``, ``A_R = [p_1 A_1; …; p_K A_K; A]``: no dense matrix is formed.
    """
    B = torch.cat([f.scale * f.B.to(_MATH) for f in factors] + [-approx.scale * approx.B.to(_MATH)], dim=1)
    A = torch.cat([float(w) * f.A.to(_MATH) for f, w in zip(factors, weights)] + [approx.A.to(_MATH)], dim=0)
    return LoraFactors(A.to(out_dtype), B.to(out_dtype), float(A.shape[0]))


def orthonormal_refactor(f: LoraFactors, out_dtype: torch.dtype = torch.float32) -> LoraFactors:
    """``s B A = (U S) Vh`` at the same rank: ``A' = Vh`` (orthonormal rows), ``B' = U S``, ``alpha = r``.

    Factored SVD (:func:`fedlora.lora.linalg.svd_of_weighted_sum`), exact up to rounding; singular
    values come sorted, so the first ``k`` components are the best rank-``k`` part (Eckart-Young).
    """
    U, S, Vh = svd_of_weighted_sum([f.B], [f.A], [f.scale])
    k, r = int(S.shape[0]), f.rank
    A = torch.zeros(r, f.d_in, dtype=_MATH)
    B = torch.zeros(f.d_out, r, dtype=_MATH)
    A[:k], B[:, :k] = Vh[:r], (U * S)[:, :r]
    return LoraFactors(A.to(out_dtype), B.to(out_dtype), float(r))


def client_head(f: LoraFactors, rank: int, alpha: float, seed: int, module: str) -> LoraFactors:
    """The first ``rank`` components of ``f`` expressed at ``alpha`` (``B`` divided by ``s_j = alpha / rank``).

    When ``f`` has fewer components, ``A`` grows with the fresh-init rows of ``(seed, module)`` and ``B``
    with zero columns (:func:`fedlora.lora.linalg.extend_rank`), so the product is unchanged and the new
    directions still train.
    """
    s_j = float(alpha) / int(rank)
    k = min(int(rank), f.rank)
    head = LoraFactors(f.A[:k], f.B[:, :k] * (f.scale / s_j), s_j * k)
    return extend_rank(head, int(rank), seed, module)


def refit_B(factors: Sequence[LoraFactors], weights: Sequence[float], A: torch.Tensor, B_ref: torch.Tensor, lam: float,
            out_dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """``argmin_B ||ΔW − B A||_F² + λ' ||B − B_ref||_F²`` with ``ΔW = Σ_k p_k s_k B_k A_k``, in closed form.

    ``B = (ΔW Aᵀ + λ' B_ref)(A Aᵀ + λ' I)⁻¹`` with ``λ' = λ · tr(A Aᵀ) / r`` (``λ`` is relative to the
    mean squared row norm of ``A``, so it does not depend on the factors' scale). ``ΔW Aᵀ`` is
    ``Σ_k p_k s_k B_k (A_k Aᵀ)``: no dense ``d_out x d_in`` matrix, ``O(Σ_k r_k r (d_in + d_out))``.
    Shapes: ``A [r, d_in]``, ``B_ref [d_out, r]`` -> ``B [d_out, r]`` (scale 1). ``λ = 0`` is plain
    least squares (needs ``A`` of full row rank).
    """
    if not factors or len(factors) != len(weights):
        raise ValueError(f"refit_B needs one weight per factor pair; got {len(factors)} and {len(weights)}")
    if not lam >= 0:
        raise ValueError(f"refit_B: lam must be >= 0, got {lam!r}")
    A64 = A.to(_MATH)
    rhs = torch.zeros(B_ref.shape[0], A64.shape[0], dtype=_MATH)
    for f, w in zip(factors, weights):
        rhs += (float(w) * f.scale) * (f.B.to(_MATH) @ (f.A.to(_MATH) @ A64.T))
    gram = A64 @ A64.T
    ridge = float(lam) * float(torch.trace(gram)) / max(int(A64.shape[0]), 1)
    if ridge == 0.0:  # least squares; the pseudo-inverse also covers an A without full row rank
        return (rhs @ torch.linalg.pinv(gram, hermitian=True)).to(out_dtype)
    rhs += ridge * B_ref.to(_MATH)
    system = gram + ridge * torch.eye(gram.shape[0], dtype=_MATH)
    return torch.linalg.solve(system, rhs.T).T.to(out_dtype)  # B·system = rhs, system symmetric

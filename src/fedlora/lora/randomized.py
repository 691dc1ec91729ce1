"""Top-k singular triplets of ``M = Σ_k w_k B_k A_k`` on the implicit operator (randomized subspace iteration).

FlexLoRA's server only ever sends rank ``<= r_max``, so it needs the top ``r_max`` singular triplets, not
the full spectrum. With many clients the stacked rank ``R = Σ r_k`` reaches the module size, where the
exact factored SVD (:func:`fedlora.lora.linalg.svd_of_weighted_sum`) falls back to a dense ``d x d`` SVD.
This module never forms ``M``: with ``P = [√w_k B_k]`` (``d_out x R``) and ``Q = [√w_k A_k]``
(``R x d_in``), ``M x = P (Q x)`` and ``Mᵀ y = Qᵀ (Pᵀ y)`` cost ``O((d_out + d_in) R)`` per vector.

Algorithm (Halko, Martinsson & Tropp, "Finding Structure with Randomness", SIAM Review 2011,
Algorithms 4.4 and 5.1): a Gaussian test matrix ``Ω`` (``d_in x (k + p)``), ``Y = M Ω``,
``q`` power iterations ``Y <- M (Mᵀ Y)`` with re-orthonormalisation, ``Q_Y = orth(Y)``, then the
exact SVD of the small ``Q_Yᵀ M`` gives ``U = Q_Y Ũ``, ``S``, ``Vh``. A generous oversampling
(``p = 32``) with one power iteration converged faster than ``p = 10`` with two on trained-like
updates (``benchmarks/aggregation.py``), since the convergence rate is ``(σ_{k+p} / σ_k)^(2q+1)``.

A-posteriori check: each returned triplet's residual ``ρ_i = ‖M v_i − s_i u_i‖`` (``u_i`` and ``v_i``
are exact singular vectors iff both ``M v_i = s_i u_i`` and ``Mᵀ u_i = s_i v_i``; the second holds by
construction) relative to ``s_1``; some singular value of ``M`` then lies within ``ρ_i`` of ``s_i``; more power iterations run until ``max_i ρ_i / s_1 <= tol`` or the
iteration budget is spent, and the bound reached is returned, so the caller can fall back to the
exact path.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["top_svd_of_weighted_sum"]


def _stack(Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype):
    P = torch.cat([math.copysign(math.sqrt(abs(float(w))), float(w)) * B.to(dtype) for B, w in zip(Bs, weights)], dim=1)
    Q = torch.cat([math.sqrt(abs(float(w))) * A.to(dtype) for A, w in zip(As, weights)], dim=0)
    return P, Q


def top_svd_of_weighted_sum(Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float], k: int, *,
                            oversample: int = 32, power_iters: int = 1, max_power_iters: int = 12, tol: float = 1e-5,
                            seed: int = 0, dtype: torch.dtype = torch.float64,
                            out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """``U [d_out, k]``, ``S [k]``, ``Vh [k, d_in]`` of the top ``k`` triplets of ``Σ w_k B_k A_k`` and the
    a-posteriori bound ``max_i ‖M v_i − s_i u_i‖ / s_1`` they reach (module docstring).

    Raises:
        ValueError: ``k < 1`` or mismatched inputs.
    """
    if k < 1 or not Bs or not (len(Bs) == len(As) == len(weights)):
        raise ValueError(f"top_svd_of_weighted_sum needs k >= 1 and matching non-empty lists; got k={k}, {len(Bs)}, {len(As)}, {len(weights)}")
    out_dtype = out_dtype or dtype
    P, Q = _stack(Bs, As, weights, dtype)
    d_out, d_in, R = P.shape[0], Q.shape[1], Q.shape[0]
    width = min(k + oversample, R, d_out, d_in)
    k = min(k, width)
    gen = torch.Generator().manual_seed(seed)
    Y = P @ (Q @ torch.randn(d_in, width, generator=gen, dtype=dtype))
    Qy = torch.linalg.qr(Y).Q
    done, bound = 0, math.inf
    while True:
        for _ in range(power_iters if done == 0 else 1):
            Z = torch.linalg.qr(Q.T @ (P.T @ Qy)).Q  # Mᵀ Qy, re-orthonormalised
            Qy = torch.linalg.qr(P @ (Q @ Z)).Q       # M Z
            done += 1
        small = (Qy.T @ P) @ Q                        # Q_yᵀ M: width x d_in
        u_s, S, Vh = torch.linalg.svd(small, full_matrices=False)
        U = Qy @ u_s[:, :k]
        S, Vh = S[:k], Vh[:k]
        residual = P @ (Q @ Vh.T) - U * S             # M v_i − s_i u_i (Mᵀ u_i = s_i v_i holds by construction)
        bound = float(residual.norm(dim=0).max() / S[0]) if S[0] > 0 else 0.0
        if bound <= tol or done >= max_power_iters:
            return U.to(out_dtype), S, Vh.to(out_dtype), bound

"""Pure LoRA tensor math shared by every strategy (torch only).

Conventions (DESIGN.md section 2): a module's update is ``ΔW = s · B @ A`` with ``s = alpha / r``,
``A`` of shape ``[r, d_in]`` and ``B`` of shape ``[d_out, r]``. Every function here is
scale-aware: it keeps or combines ``s · B @ A``, never the raw product.

Precision: the SVD helpers compute in float64 by default (``dtype=``), which keeps the relative
error of a reconstructed update around 1e-12 against an exact reference; callers cast the result
to their storage dtype (float32 in the strategies, relative error ~1e-7).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

from fedlora.lora.factors import LoraFactors

__all__ = [
    "lora_delta",
    "weighted_delta",
    "pad_rank",
    "truncate_rank",
    "rescale_alpha",
    "factor_gram_norm",
    "svd_of_weighted_sum",
    "svd_to_factors",
    "module_seed",
    "init_lora_factors",
    "extend_rank",
]


def lora_delta(f: LoraFactors, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dense scale-aware update ``ΔW = (alpha / r) · B @ A``, shape ``[d_out, d_in]``."""
    return f.scale * (f.B.to(dtype) @ f.A.to(dtype))


def weighted_delta(
    factors: Sequence[LoraFactors], weights: Sequence[float], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Dense ``Σ_k w_k · s_k · B_k @ A_k`` of shape ``[d_out, d_in]`` (references, small modules).

    Forms the ``d_out x d_in`` matrix: use :func:`svd_of_weighted_sum` on large modules.
    """
    if len(factors) != len(weights) or not factors:
        raise ValueError(f"weighted_delta needs one weight per factor pair; got {len(factors)} factors and {len(weights)} weights")
    total = torch.zeros(factors[0].d_out, factors[0].d_in, dtype=dtype)
    for f, w in zip(factors, weights):
        total += float(w) * lora_delta(f, dtype)
    return total


def pad_rank(f: LoraFactors, rank: int) -> LoraFactors:
    """Zero-pad ``A`` rows and ``B`` columns up to ``rank``, keeping ``ΔW`` unchanged.

    The scale ``alpha / r`` is kept by setting ``alpha' = alpha · rank / r``. Shapes:
    ``A [r, d_in] -> [rank, d_in]``, ``B [d_out, r] -> [d_out, rank]``.
    """
    if rank < f.rank:
        raise ValueError(f"pad_rank: target rank {rank} is below the factors' rank {f.rank}; use truncate_rank to shrink")
    extra = rank - f.rank
    A = torch.cat([f.A, f.A.new_zeros(extra, f.d_in)], dim=0)
    B = torch.cat([f.B, f.B.new_zeros(f.d_out, extra)], dim=1)
    return LoraFactors(A, B, f.alpha * rank / f.rank)


def truncate_rank(f: LoraFactors, rank: int) -> LoraFactors:
    """Keep the first ``rank`` rows of ``A`` and columns of ``B`` (HetLoRA), keeping the scale.

    ``alpha' = alpha · rank / r`` so that ``s' = s``; the result is the leading-rank part of
    ``s · B @ A``. Shapes: ``A [rank, d_in]``, ``B [d_out, rank]``.
    """
    if not 1 <= rank <= f.rank:
        raise ValueError(f"truncate_rank: target rank {rank} must be in [1, {f.rank}] (the factors' rank); use pad_rank to grow")
    return LoraFactors(f.A[:rank], f.B[:, :rank], f.alpha * rank / f.rank)


def rescale_alpha(f: LoraFactors, alpha: float) -> LoraFactors:
    """Same ``ΔW`` expressed with another alpha: ``B' = B · s / s'`` where ``s' = alpha / r``."""
    if not alpha > 0:
        raise ValueError(f"rescale_alpha: alpha must be > 0; got {alpha}")
    ratio = f.scale / (alpha / f.rank)
    return LoraFactors(f.A, f.B * ratio if ratio != 1.0 else f.B, float(alpha))


def factor_gram_norm(f: LoraFactors) -> float:
    """``||s · B @ A||_F`` without forming the dense matrix: ``s · sqrt(<BᵀB, AAᵀ>)`` (r x r Grams)."""
    A, B = f.A.to(torch.float64), f.B.to(torch.float64)
    inner = float(((B.T @ B) * (A @ A.T)).sum())
    return abs(f.scale) * math.sqrt(max(inner, 0.0))


def svd_of_weighted_sum(
    Bs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ``M = Σ_k w_k B_k @ A_k`` without forming ``M`` (FlexLoRA, Bai et al. 2024).

    Stack ``P = [sign(w_k) √|w_k| B_k]`` (``d_out x R``) and ``Q = [√|w_k| A_k]`` (``R x d_in``) with
    ``R = Σ r_k``, so ``M = P @ Q``. With ``P = Q_P R_P`` and ``Qᵀ = Q_Q R_Q`` (reduced QR),
    ``M = Q_P (R_P R_Qᵀ) Q_Qᵀ``; the SVD of the ``R x R`` core ``R_P R_Qᵀ = U_c S Vh_c`` gives
    ``U = Q_P U_c``, ``Vh = Vh_c Q_Qᵀ``. Exact, ``O((d_out + d_in) R²)`` time, no ``d_out x d_in``
    matrix. The QR is Cholesky QR when the stacks are well conditioned (fast: matrix products only)
    and Householder QR otherwise (see :func:`_cholesky_qr_svd`). Falls back to the dense SVD of
    ``M`` (accumulated in chunks, never fully stacked) when ``R >= min(d_out, d_in)``.

    Fold LoRA scales into ``Bs`` (``s_k B_k``) or into ``weights`` (``p_k s_k``).

    Precision and memory: every product and factorisation runs in ``dtype`` (float64 by default);
    ``P``, ``Q``, ``U`` and ``Vh`` are stored in ``out_dtype`` (default ``dtype``). With float32
    inputs and ``out_dtype=torch.float32`` the only loss is the final float32 rounding (relative
    error ~1e-7) and the working memory is about four ``d x R`` float32 matrices.

    Returns:
        ``U [d_out, K]`` and ``Vh [K, d_in]`` in ``out_dtype``, ``S [K]`` (descending) in ``dtype``,
        with ``K = min(R, d_out, d_in)``.
    """
    if not (len(Bs) == len(As) == len(weights)) or not Bs:
        raise ValueError(f"svd_of_weighted_sum needs matching non-empty lists; got {len(Bs)} Bs, {len(As)} As, {len(weights)} weights")
    bad = [k for k, (B, A) in enumerate(zip(Bs, As)) if B.shape[1] != A.shape[0]]
    if bad:
        k = bad[0]
        raise ValueError(f"svd_of_weighted_sum: pair {k} has B {tuple(Bs[k].shape)} and A {tuple(As[k].shape)}; B_k must be d_out x r_k and A_k r_k x d_in")
    out_dtype = out_dtype or dtype
    d_out, d_in, R = Bs[0].shape[0], As[0].shape[1], sum(int(A.shape[0]) for A in As)
    if R >= min(d_out, d_in):
        U, S, Vh = torch.linalg.svd(_accumulate(Bs, As, weights, dtype), full_matrices=False)
        return U.to(out_dtype), S, Vh.to(out_dtype)
    P = torch.empty(d_out, R, dtype=out_dtype)
    Q = torch.empty(R, d_in, dtype=out_dtype)
    start = 0
    for B, A, w in zip(Bs, As, weights):
        root, stop = math.sqrt(abs(float(w))), start + A.shape[0]
        P[:, start:stop] = B
        P[:, start:stop] *= math.copysign(root, float(w))
        Q[start:stop] = A
        Q[start:stop] *= root
        start = stop
    fast = _cholesky_qr_svd(P, Q, dtype)
    if fast is not None:
        return fast
    q_p, r_p = torch.linalg.qr(P.to(dtype))  # Householder: [d_out, R], [R, R]
    q_q, r_q = torch.linalg.qr(Q.T.to(dtype))  # [d_in, R], [R, R]
    u_c, S, vh_c = torch.linalg.svd(r_p @ r_q.T)
    return (q_p @ u_c).to(out_dtype), S, (vh_c @ q_q.T).to(out_dtype)


def _cholesky_qr_svd(P: torch.Tensor, Q: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The factored SVD with Cholesky QR: matrix products only, several times faster than Householder.

    ``PᵀP = L_P L_Pᵀ`` gives ``P = Q_P R_P`` with ``R_P = L_Pᵀ`` and ``Q_P = P L_P⁻ᵀ`` (likewise
    ``Q Qᵀ = L_Q L_Qᵀ``); then ``U = P L_P⁻ᵀ U_c`` and ``Vh = Vh_c L_Q⁻¹ Q``. Its error grows like
    ``eps · κ²``, so it returns ``None`` (use Householder QR) unless both factors are positive
    definite with ``κ ≤ sqrt(1e-6 / eps)`` (about 1e5 in float64): rank-deficient stacks (identical
    or zero clients) always take the Householder path. Products run in ``dtype`` by chunks, so ``P``
    and ``Q`` are never copied whole.
    """
    max_cond = math.sqrt(1e-6 / torch.finfo(dtype).eps)
    L_p, info_p = torch.linalg.cholesky_ex(_gram(P, dtype))
    L_q, info_q = torch.linalg.cholesky_ex(_gram(Q.T, dtype))
    if int(info_p) or int(info_q):
        return None
    for L in (L_p, L_q):
        sv = torch.linalg.svdvals(L)
        if not bool(torch.isfinite(sv).all()) or float(sv[-1]) * max_cond < float(sv[0]):
            return None
    u_c, S, vh_c = torch.linalg.svd(L_p.T @ L_q)
    U = _tall_times(P, torch.linalg.solve_triangular(L_p.T, u_c, upper=True), dtype)
    Vh = _tall_times(Q.T, torch.linalg.solve_triangular(L_q.T, vh_c.T, upper=True), dtype, transpose=True)
    return U, S, Vh


def _gram(X: torch.Tensor, dtype: torch.dtype, chunk: int = 1024) -> torch.Tensor:
    """``XᵀX`` in ``dtype`` for a tall ``X [n, R]``, summed over row chunks (one chunk copied at a time)."""
    G = torch.zeros(X.shape[1], X.shape[1], dtype=dtype)
    for i in range(0, X.shape[0], chunk):
        c = X[i : i + chunk].to(dtype)
        G.addmm_(c.T, c)
    return G


def _tall_times(X: torch.Tensor, Y: torch.Tensor, dtype: torch.dtype, transpose: bool = False, chunk: int = 1024) -> torch.Tensor:
    """``X @ Y`` (or its transpose) for a tall ``X [n, R]`` and small ``Y [R, k]``, computed in
    ``dtype`` by row chunks of ``X`` and stored contiguously in ``X.dtype``."""
    out = torch.empty((Y.shape[1], X.shape[0]) if transpose else (X.shape[0], Y.shape[1]), dtype=X.dtype)
    for i in range(0, X.shape[0], chunk):
        block = X[i : i + chunk].to(dtype) @ Y
        if transpose:
            out[:, i : i + chunk] = block.T
        else:
            out[i : i + chunk] = block
    return out


def _accumulate(
    Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype, chunk_rank: int = 1024
) -> torch.Tensor:
    """``Σ w_k B_k @ A_k`` as a dense ``d_out x d_in`` matrix, in stacked chunks of rank ``<= chunk_rank``
    (one large matmul per chunk instead of one thin one per pair; never the full stack in memory)."""
    M = torch.zeros(Bs[0].shape[0], As[0].shape[1], dtype=dtype)
    start = 0
    while start < len(Bs):
        stop, rank = start, 0
        while stop < len(Bs) and (stop == start or rank + As[stop].shape[0] <= chunk_rank):
            rank += As[stop].shape[0]
            stop += 1
        P = torch.cat([float(w) * B.to(dtype) for B, w in zip(Bs[start:stop], weights[start:stop])], dim=1)
        M.addmm_(P, torch.cat([A.to(dtype) for A in As[start:stop]], dim=0))
        start = stop
    return M


def svd_to_factors(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int, alpha: float, dtype: torch.dtype = torch.float32
) -> LoraFactors:
    """Best rank-``rank`` LoRA factors of ``U diag(S) Vh`` with scale ``s = alpha / rank``.

    FlexLoRA's convention: all singular values go to ``B``: ``B = U_r S_r / s``, ``A = Vh_r``.
    If fewer than ``rank`` singular triplets exist, ``A`` and ``B`` are zero-padded (see
    :func:`extend_rank` to pad ``A`` with trainable rows instead).
    """
    k = min(rank, S.shape[0])
    s = alpha / rank
    B = torch.zeros(U.shape[0], rank, dtype=dtype)
    A = torch.zeros(rank, Vh.shape[1], dtype=dtype)
    B[:, :k] = U[:, :k] * (S[:k] / s)
    A[:k] = Vh[:k]
    return LoraFactors(A, B, float(alpha))


def module_seed(seed: int, module_name: str) -> int:
    """A stable 63-bit seed from ``(seed, module_name)`` (hashlib, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{module_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_lora_factors(d_out: int, d_in: int, rank: int, alpha: float, seed: int, module_name: str) -> LoraFactors:
    """Fresh deterministic LoRA init, as PEFT does: ``A ~ kaiming_uniform(a=√5)``, ``B = 0``.

    For ``A`` of shape ``[rank, d_in]`` (fan_in ``d_in``) PEFT's kaiming-uniform with ``a = √5`` is
    ``U(-1/√d_in, 1/√d_in)``. Rows are drawn one after another from a CPU generator seeded by
    :func:`module_seed`, so the ``A`` of rank ``r`` is the first ``r`` rows of the ``A`` of any
    larger rank: clients of different ranks share a common init. Float32.
    """
    if rank < 1 or d_out < 1 or d_in < 1:
        raise ValueError(f"init_lora_factors: rank, d_out, d_in must be >= 1; got rank={rank}, d_out={d_out}, d_in={d_in}")
    gen = torch.Generator(device="cpu").manual_seed(module_seed(seed, module_name))
    bound = 1.0 / math.sqrt(d_in)
    A = torch.empty(rank, d_in)
    for i in range(rank):
        A[i].uniform_(-bound, bound, generator=gen)
    return LoraFactors(A, torch.zeros(d_out, rank), float(alpha))


def extend_rank(f: LoraFactors, rank: int, seed: int, module_name: str) -> LoraFactors:
    """Grow ``f`` to ``rank`` keeping ``ΔW`` and trainability: ``B`` gets zero columns, ``A`` gets
    the matching rows of the fresh init (:func:`init_lora_factors`), so the product is unchanged
    while the new directions still receive gradients (zero rows in both would stay zero).
    The scale is kept: ``alpha' = alpha · rank / r``.
    """
    if rank <= f.rank:
        return truncate_rank(f, rank) if rank < f.rank else f
    fresh = init_lora_factors(f.d_out, f.d_in, rank, 1.0, seed, module_name).A[f.rank :].to(f.A.dtype)
    A = torch.cat([f.A, fresh], dim=0)
    B = torch.cat([f.B, f.B.new_zeros(f.d_out, rank - f.rank)], dim=1)
    return LoraFactors(A, B, f.alpha * rank / f.rank)


def best_rank_factors(f: LoraFactors, rank: int) -> tuple[LoraFactors, float, float]:
    """The best rank-``rank`` approximation of ``s B A`` (Eckart-Young) as factors, and the spectral energy
    ``(Σ_{i<=rank} σ_i², Σ_i σ_i²)`` it keeps; factored SVD, no dense ``ΔW``. The result has ``alpha = rank'``
    (scale 1) with ``rank' = min(rank, f.rank)``."""
    if rank < 1:
        raise ValueError(f"best_rank_factors needs rank >= 1, got {rank}")
    U, S, Vh = svd_of_weighted_sum([f.B], [f.A], [f.scale])
    k = min(rank, int(S.shape[0]))
    energy = S.square()
    out = LoraFactors(Vh[:k].to(f.A.dtype).contiguous(), (U[:, :k] * S[:k]).to(f.B.dtype).contiguous(), float(k))
    return out, float(energy[:k].sum()), float(energy.sum())

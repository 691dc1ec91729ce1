"""Top-k SVD of Σ w_k B_k A_k on the implicit operator, against the exact dense SVD; FlexLoRA's state rank."""

from __future__ import annotations

import pytest
import torch

from fedlora.lora.factors import LoraFactors
from fedlora.lora.randomized import top_svd_of_weighted_sum
from fedlora.strategies.flexlora import flexlora_aggregate


def _clients(n: int, d: int, r: int, shared: int, noise: float, seed: int = 0):
    """Client updates that share a decaying rank-``shared`` direction plus individual noise (as trained clients do)."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, shared, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(d, shared, generator=gen, dtype=torch.float64)).Q
    s = torch.logspace(0, -3, shared, dtype=torch.float64)
    Bs, As = [], []
    for _ in range(n):
        Bs.append(torch.cat([U * s.sqrt(), noise * torch.randn(d, r - shared, generator=gen, dtype=torch.float64)], 1))
        As.append(torch.cat([(V * s.sqrt()).T, noise * torch.randn(r - shared, d, generator=gen, dtype=torch.float64)], 0))
    return Bs, As, [1.0 / n] * n


def _dense(Bs, As, w):
    return sum(wk * B @ A for B, A, wk in zip(Bs, As, w))


def test_top_k_matches_the_dense_svd_and_the_bound_holds():
    Bs, As, w = _clients(n=12, d=160, r=16, shared=8, noise=1e-3)
    U, S, Vh, bound = top_svd_of_weighted_sum(Bs, As, w, 8, tol=1e-8)
    exact = torch.linalg.svdvals(_dense(Bs, As, w))
    assert bound <= 1e-8
    err = float(((S - exact[:8]).abs() / exact[0]).max())
    assert err <= 1e-8 and err <= bound + 1e-12
    M = _dense(Bs, As, w)
    torch.testing.assert_close(U * S @ Vh, _best(M, 8), rtol=0, atol=1e-8)
    assert torch.allclose(U.T @ U, torch.eye(8, dtype=U.dtype), atol=1e-10)


def _best(M, k):
    U, S, Vh = torch.linalg.svd(M)
    return U[:, :k] * S[:k] @ Vh[:k]


def test_a_flat_spectrum_reports_a_bound_above_tolerance():
    gen = torch.Generator().manual_seed(1)
    Bs = [torch.randn(64, 8, generator=gen, dtype=torch.float64) for _ in range(6)]
    As = [torch.randn(8, 64, generator=gen, dtype=torch.float64) for _ in range(6)]
    *_, bound = top_svd_of_weighted_sum(Bs, As, [1 / 6] * 6, 8, max_power_iters=2, tol=1e-12)
    assert bound > 1e-12


def test_flexlora_state_rank_uses_the_randomized_path_when_it_meets_the_tolerance():
    Bs, As, w = _clients(n=10, d=96, r=8, shared=4, noise=1e-4, seed=2)
    factors = [LoraFactors(A.float(), B.float(), 8.0) for B, A in zip(Bs, As)]  # alpha = r: scale 1
    g, path = flexlora_aggregate(factors, w, state_rank=4, tol=1e-4)
    exact, exact_path = flexlora_aggregate(factors, w)
    assert path == "randomized" and exact_path == "exact" and g.rank == 4 and exact.rank == 80
    torch.testing.assert_close(g.delta(torch.float64), _best(exact.delta(torch.float64), 4), rtol=0, atol=1e-5)


def test_flexlora_falls_back_to_the_exact_path_when_the_bound_is_not_met():
    gen = torch.Generator().manual_seed(3)
    factors = [LoraFactors(torch.randn(8, 48, generator=gen), torch.randn(40, 8, generator=gen), 8.0) for _ in range(6)]
    g, path = flexlora_aggregate(factors, [1 / 6] * 6, state_rank=4, tol=1e-14)
    exact, _ = flexlora_aggregate(factors, [1 / 6] * 6)
    assert path == "exact" and g.rank == 4
    torch.testing.assert_close(g.delta(torch.float64), _best(exact.delta(torch.float64), 4), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        top_svd_of_weighted_sum([], [], [], 4)
    from fedlora.strategies import make_strategy

    with pytest.raises(ValueError, match="state_rank"):
        make_strategy("flexlora", state_rank=-1)

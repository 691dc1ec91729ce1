"""fedlora.lora.linalg: hand-computed cases, and the factored SVD against the dense SVD."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.lora.factors import LoraFactors
from fedlora.lora.linalg import (
    extend_rank,
    factor_gram_norm,
    init_lora_factors,
    lora_delta,
    module_seed,
    pad_rank,
    rescale_alpha,
    svd_of_weighted_sum,
    svd_to_factors,
    truncate_rank,
    weighted_delta,
)


def _rand(seed: int, d_out: int, d_in: int, rank: int, alpha: float) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(rank, d_in, generator=g), torch.randn(d_out, rank, generator=g), alpha)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x.double() - ref.double()) / torch.linalg.matrix_norm(ref.double()))


def test_lora_delta_hand_computed():
    # Prepare: rank 1, alpha 2 -> scale 2; B A = [[1*3, 1*4], [2*3, 2*4]]
    f = LoraFactors(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0], [2.0]]), alpha=2.0)
    # Execute
    d = lora_delta(f)
    # Assert
    assert torch.equal(d, torch.tensor([[6.0, 8.0], [12.0, 16.0]], dtype=torch.float64))


def test_weighted_delta_hand_computed():
    f1 = LoraFactors(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]), alpha=1.0)  # e11
    f2 = LoraFactors(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0], [1.0]]), alpha=4.0)  # 4 * e22
    d = weighted_delta([f1, f2], [0.25, 0.75])
    assert torch.equal(d, torch.tensor([[0.25, 0.0], [0.0, 3.0]], dtype=torch.float64))


def test_pad_rank_keeps_delta_and_scale():
    f = _rand(0, 5, 4, 2, alpha=4.0)
    p = pad_rank(f, 6)
    assert p.A.shape == (6, 4) and p.B.shape == (5, 6)
    assert torch.all(p.A[2:] == 0) and torch.all(p.B[:, 2:] == 0)
    assert p.scale == f.scale
    torch.testing.assert_close(lora_delta(p), lora_delta(f))


def test_truncate_rank_takes_leading_components_at_the_same_scale():
    f = _rand(1, 5, 4, 3, alpha=6.0)
    t = truncate_rank(f, 2)
    assert t.A.shape == (2, 4) and t.B.shape == (5, 2) and t.scale == f.scale
    torch.testing.assert_close(lora_delta(t), f.scale * (f.B[:, :2] @ f.A[:2]).double())


@pytest.mark.parametrize("call", [lambda f: pad_rank(f, 1), lambda f: truncate_rank(f, 4), lambda f: truncate_rank(f, 0)])
def test_pad_and_truncate_reject_the_wrong_direction(call):
    with pytest.raises(ValueError, match="rank"):
        call(_rand(2, 3, 3, 2, 2.0))


def test_rescale_alpha_keeps_delta():
    f = _rand(3, 5, 4, 2, alpha=16.0)
    g = rescale_alpha(f, 3.0)
    assert g.alpha == 3.0
    torch.testing.assert_close(lora_delta(g), lora_delta(f))


def test_factor_gram_norm_matches_dense_norm():
    f = _rand(4, 30, 20, 5, alpha=7.0)
    assert factor_gram_norm(f) == pytest.approx(float(torch.linalg.matrix_norm(lora_delta(f))), rel=1e-12)


def _dense_svd_check(Bs, As, ws):
    U, S, Vh = svd_of_weighted_sum(Bs, As, ws)
    M = sum(w * B.double() @ A.double() for B, A, w in zip(Bs, As, ws))
    S_ref = torch.linalg.svdvals(M)
    k = S.shape[0]
    assert k == min(sum(a.shape[0] for a in As), *M.shape)
    assert _rel((U * S) @ Vh, M) < 1e-12
    torch.testing.assert_close(S, S_ref[:k], rtol=1e-10, atol=1e-10 * float(S_ref[0]))
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(Vh @ Vh.T, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)
    return U, S, Vh


def test_factored_svd_matches_dense_svd_mixed_ranks():
    # Prepare: 4 clients of ranks 1..8 on a 40 x 30 module (R = 15 < 30: factored path)
    fs = [_rand(10 + k, 40, 30, r, alpha=2.0 * r) for k, r in enumerate((1, 2, 4, 8))]
    ws = [0.1, 0.2, 0.3, 0.4]
    # Execute / Assert
    _dense_svd_check([f.scale * f.B for f in fs], [f.A for f in fs], ws)


def test_factored_svd_dense_fallback_when_stacked_rank_reaches_d():
    # R = 6 + 6 = 12 >= min(10, 9): dense fallback, K = 9
    fs = [_rand(20 + k, 10, 9, 6, alpha=1.0) for k in range(2)]
    U, S, Vh = _dense_svd_check([f.B for f in fs], [f.A for f in fs], [0.5, 0.5])
    assert U.shape == (10, 9) and Vh.shape == (9, 9)


def test_factored_svd_negative_weight_and_rank_deficient_input():
    f = _rand(30, 12, 11, 3, alpha=1.0)
    zero = LoraFactors(torch.zeros(2, 11), torch.zeros(12, 2), 1.0)
    _dense_svd_check([f.B, zero.B, f.B], [f.A, zero.A, f.A], [1.0, 0.5, -0.25])


def test_factored_svd_per_module_mixed_ranks_in_one_client():
    # Rank 30 on an attention-like module and 200 on an MLP-like one; dims keep both factored.
    attn = [_rand(40 + k, 256, 256, 30, 60.0) for k in range(2)]
    mlp = [_rand(50 + k, 688, 256, r, 2.0 * r) for k, r in enumerate((200, 20))]
    for fs in (attn, mlp):
        U, S, Vh = svd_of_weighted_sum([f.scale * f.B for f in fs], [f.A for f in fs], [0.5, 0.5])
        assert _rel((U * S) @ Vh, weighted_delta(fs, [0.5, 0.5])) < 1e-12


def test_factored_svd_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="matching"):
        svd_of_weighted_sum([torch.ones(3, 1)], [], [1.0])


def test_svd_to_factors_is_the_best_rank_r_approximation():
    # Prepare: dense reference (Eckart-Young through torch.linalg.svd)
    fs = [_rand(60 + k, 20, 15, r, 2.0 * r) for k, r in enumerate((3, 5))]
    M = weighted_delta(fs, [0.3, 0.7])
    U_ref, S_ref, Vh_ref = torch.linalg.svd(M, full_matrices=False)
    # Execute
    out = svd_to_factors(*svd_of_weighted_sum([f.scale * f.B for f in fs], [f.A for f in fs], [0.3, 0.7]), rank=4, alpha=8.0)
    # Assert
    assert out.A.shape == (4, 15) and out.B.shape == (20, 4) and out.alpha == 8.0
    assert _rel(lora_delta(out), (U_ref[:, :4] * S_ref[:4]) @ Vh_ref[:4]) < 1e-5


def test_svd_to_factors_zero_pads_beyond_available_rank():
    U, S, Vh = torch.linalg.svd(torch.randn(6, 5, dtype=torch.float64), full_matrices=False)
    out = svd_to_factors(U[:, :2], S[:2], Vh[:2], rank=4, alpha=4.0)
    assert out.A.shape == (4, 5) and torch.all(out.A[2:] == 0) and torch.all(out.B[:, 2:] == 0)


def test_init_lora_factors_peft_bound_zero_B_and_determinism():
    f = init_lora_factors(7, 64, 8, 16.0, seed=3, module_name="m.q_proj")
    again = init_lora_factors(7, 64, 8, 16.0, seed=3, module_name="m.q_proj")
    assert f.A.shape == (8, 64) and f.B.shape == (7, 8) and f.alpha == 16.0 and f.A.dtype == torch.float32
    assert torch.equal(f.A, again.A) and torch.all(f.B == 0)
    assert float(f.A.abs().max()) <= 1 / math.sqrt(64)  # kaiming_uniform(a=√5): U(-1/√d_in, 1/√d_in)
    assert float(f.A.abs().max()) > 0.9 / math.sqrt(64)


def test_init_lora_factors_smaller_rank_is_a_prefix_of_larger_rank():
    small = init_lora_factors(5, 33, 3, 3.0, seed=1, module_name="m.v_proj")
    large = init_lora_factors(5, 33, 40, 80.0, seed=1, module_name="m.v_proj")
    assert torch.equal(small.A, large.A[:3])


def test_init_lora_factors_differs_across_modules_and_seeds():
    a = init_lora_factors(4, 16, 2, 2.0, seed=0, module_name="m.q_proj").A
    assert not torch.equal(a, init_lora_factors(4, 16, 2, 2.0, seed=0, module_name="m.k_proj").A)
    assert not torch.equal(a, init_lora_factors(4, 16, 2, 2.0, seed=1, module_name="m.q_proj").A)


def test_module_seed_is_pinned_across_processes():
    # hashlib-based, so this value holds under any PYTHONHASHSEED, on any machine.
    assert module_seed(7, "model.layers.0.mlp.up_proj") == 5321404840780693182


def test_extend_rank_keeps_delta_and_uses_fresh_rows_for_A():
    f = _rand(70, 6, 8, 2, alpha=4.0)
    e = extend_rank(f, 5, seed=9, module_name="m")
    fresh = init_lora_factors(6, 8, 5, 1.0, 9, "m").A
    assert e.A.shape == (5, 8) and e.B.shape == (6, 5) and e.scale == f.scale
    assert torch.equal(e.A[2:], fresh[2:]) and torch.all(e.B[:, 2:] == 0)
    torch.testing.assert_close(lora_delta(e), lora_delta(f))


def test_dense_fallback_accumulates_in_chunks_exactly():
    from fedlora.lora.linalg import _accumulate

    fs = [_rand(80 + k, 7, 6, r, float(r)) for k, r in enumerate((1, 2, 3, 1, 4))]  # scale 1
    ws = [0.1, -0.2, 0.3, 0.4, 0.4]
    for chunk in (1, 3, 1024):
        M = _accumulate([f.B for f in fs], [f.A for f in fs], ws, torch.float64, chunk_rank=chunk)
        torch.testing.assert_close(M, weighted_delta(fs, ws))


def test_factored_svd_names_the_mismatched_pair():
    with pytest.raises(ValueError, match=r"pair 1 has B \(3, 2\) and A \(1, 4\)"):
        svd_of_weighted_sum([torch.ones(3, 1), torch.ones(3, 2)], [torch.ones(1, 4), torch.ones(1, 4)], [1.0, 1.0])


def test_cholesky_and_householder_paths_agree_with_dense():
    from fedlora.lora.linalg import _cholesky_qr_svd

    # Prepare: well-conditioned stacks take Cholesky QR; a duplicated client makes them singular
    fs = [_rand(90 + k, 50, 40, r, 1.0) for k, r in enumerate((3, 5, 2))]
    P = torch.cat([f.B.double() for f in fs], dim=1)
    Q = torch.cat([f.A.double() for f in fs], dim=0)
    # Execute / Assert
    assert _cholesky_qr_svd(P, Q, torch.float64) is not None
    assert _cholesky_qr_svd(torch.cat([P, P], dim=1), torch.cat([Q, Q], dim=0), torch.float64) is None
    _dense_svd_check([f.B for f in fs], [f.A for f in fs], [1.0, 1.0, 1.0])
    _dense_svd_check([f.B for f in fs + fs], [f.A for f in fs + fs], [1.0] * 6)


def test_chunked_gram_and_products_cross_chunk_boundaries():
    from fedlora.lora.linalg import _gram, _tall_times

    X, Y = torch.randn(23, 4), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(_gram(X, torch.float64, chunk=5), X.double().T @ X.double())
    torch.testing.assert_close(_tall_times(X, Y, torch.float64, chunk=5), (X.double() @ Y).float())
    torch.testing.assert_close(_tall_times(X, Y, torch.float64, transpose=True, chunk=5), (X.double() @ Y).float().T)


def test_float32_storage_keeps_the_error_at_float32_rounding():
    # Prepare: float32 client factors, float64 math, float32 outputs
    fs = [_rand(100 + k, 300, 200, r, 2.0 * r) for k, r in enumerate((8, 16, 4))]
    ws = [0.2 * f.scale for f in fs]
    # Execute
    U, S, Vh = svd_of_weighted_sum([f.B for f in fs], [f.A for f in fs], ws, out_dtype=torch.float32)
    # Assert
    assert U.dtype == Vh.dtype == torch.float32 and S.dtype == torch.float64
    assert U.is_contiguous() and Vh.is_contiguous()
    assert _rel((U.double() * S) @ Vh.double(), weighted_delta(fs, [0.2] * 3)) < 1e-6

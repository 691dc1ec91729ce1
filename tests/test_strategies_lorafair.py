"""LoRA-FAIR against a dense reference computed by hand (float64): the server's corrected ``B'`` is
the ridge least-squares fit of the ideal update ``ΔW = Σ p_k s_k B_k A_k`` on the averaged ``Ā``."""

from __future__ import annotations

import pytest
import torch

from test_strategies_common import ideal_average, Q, UP, make_plan, simulate_client

from fedlora.lora.compose import refit_B
from fedlora.lora.factors import LoraFactors, Update
from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy


_ideal = ideal_average


def _round(s, server_round: int, ranks: list[dict[str, int]], seed: int):
    plans = [make_plan(f"c{k}", r) for k, r in enumerate(ranks)]
    payloads = s.configure(server_round, plans)
    gen = torch.Generator().manual_seed(seed)
    return payloads, [simulate_client(payloads[p.client_id], gen, 2 + 3 * k) for k, p in enumerate(plans)]


def _dense_refit(dW: torch.Tensor, A: torch.Tensor, B_ref: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_B ||dW - B A||² + λ'||B - B_ref||² by the normal equations on dense float64 matrices."""
    G = A @ A.T
    ridge = lam * float(torch.trace(G)) / A.shape[0]
    return torch.linalg.solve(G + ridge * torch.eye(A.shape[0], dtype=torch.float64), (dW @ A.T + ridge * B_ref).T).T


@pytest.mark.parametrize("lam", [0.0, 0.01, 10.0])
def test_refit_B_matches_the_dense_normal_equations(lam):
    gen = torch.Generator().manual_seed(0)
    factors = [LoraFactors(torch.randn(r, 9, generator=gen), torch.randn(7, r, generator=gen), a) for r, a in ((2, 4.0), (3, 3.0), (2, 1.0))]
    weights = [0.5, 0.3, 0.2]
    A = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    B_ref = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    dW = sum(w * lora_delta(f) for f, w in zip(factors, weights))
    got = refit_B(factors, weights, A, B_ref, lam, out_dtype=torch.float64)
    torch.testing.assert_close(got, _dense_refit(dW, A, B_ref, lam), rtol=1e-9, atol=1e-10)


def test_lorafair_corrects_fedavg_toward_the_ideal_update_equal_ranks():
    # Prepare: three clients at one rank, two rounds
    s = make_strategy("lorafair", seed=0, lam=0.01)
    _, updates = _round(s, 1, [{Q: 3, UP: 2}] * 3, seed=1)
    # Execute
    result = s.aggregate(1, updates)
    # Assert: B' is the dense ridge fit on Ā = Σ p_k A_k with B̄ = Σ p_k s_k B_k as the reference
    total = sum(u.num_examples for u in updates)
    p = [u.num_examples / total for u in updates]
    for m in (Q, UP):
        fs = [u.factors[m] for u in updates]
        A_bar = sum(w * f.A.double() for f, w in zip(fs, p))
        B_bar = sum(w * f.scale * f.B.double() for f, w in zip(fs, p))
        want = _dense_refit(_ideal(updates, m), A_bar, B_bar, 0.01)
        g = s.global_adapter()[m]
        torch.testing.assert_close(g.A.double(), A_bar, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g.B.double(), want, rtol=1e-5, atol=1e-6)
        # the correction is closer to the ideal update than FedAvg's product
        err_fair = torch.linalg.norm(lora_delta(g) - _ideal(updates, m))
        err_avg = torch.linalg.norm(B_bar @ A_bar - _ideal(updates, m))
        assert err_fair < err_avg
    assert result.metrics["fair_relative_residual"] < result.metrics["fedavg_relative_residual"]
    # and round 2 starts every client from (Ā, B') at its own alpha
    payloads, _ = _round(s, 2, [{Q: 3, UP: 2}] * 3, seed=2)
    for m in (Q, UP):
        torch.testing.assert_close(lora_delta(payloads["c1"].init[m]), lora_delta(s.global_adapter()[m]), rtol=1e-5, atol=1e-6)


def test_lorafair_large_lambda_is_fedit():
    fair, fedit = make_strategy("lorafair", seed=0, lam=1e9), make_strategy("fedit", seed=0)
    _, updates = _round(fair, 1, [{Q: 2, UP: 2}] * 3, seed=3)
    _round(fedit, 1, [{Q: 2, UP: 2}] * 3, seed=3)
    fair.aggregate(1, updates)
    fedit.aggregate(1, updates)
    for m in (Q, UP):
        torch.testing.assert_close(lora_delta(fair.global_adapter()[m]), lora_delta(fedit.global_adapter()[m]), rtol=1e-5, atol=1e-7)


def test_lorafair_mixed_ranks_each_client_gets_its_own_correction():
    # Prepare: ranks 1, 2 and 4 on Q
    s = make_strategy("lorafair", seed=0, lam=0.0)
    ranks = [{Q: 1, UP: 2}, {Q: 2, UP: 2}, {Q: 4, UP: 2}]
    _, updates = _round(s, 1, ranks, seed=4)
    s.aggregate(1, updates)
    # Execute: round 2 payloads
    payloads, _ = _round(s, 2, ranks, seed=5)
    # Assert: client j starts from Ā[:r_j] and the least-squares B for those rows (λ = 0)
    g = s.global_adapter()[Q]
    dW = _ideal(updates, Q)
    assert g.rank == 4
    for k, r in enumerate((1, 2, 4)):
        init = payloads[f"c{k}"].init[Q]
        assert init.rank == r
        torch.testing.assert_close(init.A, g.A[:r])
        A = g.A[:r].double()
        want = dW @ A.T @ torch.linalg.pinv(A @ A.T)
        torch.testing.assert_close(init.scale * init.B.double(), want, rtol=1e-5, atol=1e-6)
    # the rank-4 start carries more of ΔW than the rank-1 start
    err = [torch.linalg.norm(lora_delta(payloads[f"c{k}"].init[Q]) - dW) for k in range(3)]
    assert err[2] <= err[1] <= err[0]


def test_lorafair_refuses_a_negative_lambda():
    with pytest.raises(ValueError, match="lam"):
        make_strategy("lorafair", lam=-1.0)

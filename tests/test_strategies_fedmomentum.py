"""FedMomentum against dense float64 references: the next LoRA is the top-r SVD of the exact
aggregate, the residual goes into the base, and the global model is the exact average."""

from __future__ import annotations

import torch

from test_strategies_common import ideal_average, Q, SHAPES, UP, make_plan, simulate_client

from fedlora.lora.linalg import lora_delta
from fedlora.strategies import make_strategy


def _round(s, server_round, ranks, seed):
    plans = [make_plan(f"c{k}", r) for k, r in enumerate(ranks)]
    payloads = s.configure(server_round, plans)
    gen = torch.Generator().manual_seed(seed)
    return payloads, [simulate_client(payloads[p.client_id], gen, 2 + 3 * k) for k, p in enumerate(plans)]


_avg = ideal_average


def _top(M, r):
    U, S, Vh = torch.linalg.svd(M)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_top_components_become_the_lora_and_the_residual_goes_into_the_base():
    s = make_strategy("fedmomentum", seed=0, shapes=SHAPES)
    ranks = [{Q: 2, UP: 2}, {Q: 3, UP: 2}, {Q: 1, UP: 2}]
    _, u1 = _round(s, 1, ranks, seed=1)
    s.aggregate(1, u1)
    p2, u2 = _round(s, 2, ranks, seed=2)
    for m in (Q, UP):
        r = max(x[m] for x in ranks)
        dW = _avg(u1, m)
        torch.testing.assert_close(lora_delta(p2["c1"].init[m]), _top(dW, min(r, 3)), rtol=1e-5, atol=1e-6)  # the rank-3 client
        torch.testing.assert_close(lora_delta(p2["c0"].base_delta[m]), dW - _top(dW, r), rtol=1e-5, atol=1e-6)
    # round 2: the global model is the exact average of the clients' models (base residual + their LoRA)
    s.aggregate(2, u2)
    for m in (Q, UP):
        models = [lora_delta(p2["c0"].base_delta[m]) + lora_delta(u.factors[m]) for u in u2]
        total = sum(u.num_examples for u in u2)
        want = sum(u.num_examples / total * x for u, x in zip(u2, models))
        torch.testing.assert_close(lora_delta(s.global_adapter()[m]), want, rtol=1e-5, atol=1e-6)

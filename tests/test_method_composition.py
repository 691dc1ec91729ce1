"""A method that differs from FedIT only in its aggregation rule is a few lines on HomogeneousAveraging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update
from fedlora.strategies.homogeneous import HomogeneousAveraging

MODULE = "model.layers.0.self_attn.q_proj"


class LargestClient(HomogeneousAveraging):
    """Keeps the factors of the client with the most examples (a rule only, for the test)."""

    name, label = "largest", "LargestClient"

    def merge(self, factors, weights):
        best = max(range(len(factors)), key=lambda k: weights[k])
        return LoraFactors(factors[best].A.double(), factors[best].scale * factors[best].B.double(), float(factors[best].rank))


def _round(method, rnd, sizes, rank=2, seed=0):
    plans = [ClientPlan.uniform(f"c{k}", [MODULE], rank=rank, alpha=2.0 * rank) for k in range(len(sizes))]
    payloads = method.configure(rnd, plans)
    gen = torch.Generator().manual_seed(seed + rnd)
    updates = [Update(f"c{k}", {MODULE: LoraFactors(torch.randn(rank, 8, generator=gen), torch.randn(6, rank, generator=gen), 2.0 * rank)}, n)
               for k, n in enumerate(sizes)]  # fmt: skip
    return payloads, updates, method.aggregate(rnd, updates)


def test_a_rule_only_method_runs_the_whole_round_from_its_merge():
    method = LargestClient(seed=3)
    _, updates, result = _round(method, 1, [5, 20, 7])
    assert sorted(result.accepted) == ["c0", "c1", "c2"] and not result.rejected
    kept = updates[1].factors[MODULE]
    got = method.global_adapter()[MODULE]
    assert torch.allclose(got.B @ got.A, (kept.scale * kept.B @ kept.A).to(got.A.dtype), atol=1e-6)  # ΔW of client c1
    payloads, _, _ = _round(method, 2, [5, 20, 7])
    sent = payloads["c0"].init[MODULE]
    assert torch.allclose((sent.scale * sent.B @ sent.A).to(got.A.dtype), got.B @ got.A, atol=1e-6)  # sent at the client's alpha
    with pytest.raises(ValueError, match="LargestClient"):
        method.configure(3, [ClientPlan.uniform("c0", [MODULE], rank=2, alpha=4.0), ClientPlan.uniform("c1", [MODULE], rank=4, alpha=8.0)])


def test_fedit_is_its_rule_on_the_shared_round():
    from fedlora.strategies import fedit

    source = Path(fedit.__file__).read_text(encoding="utf-8")
    assert len(source.splitlines()) < 60
    assert issubclass(fedit.FedIT, HomogeneousAveraging) and set(vars(fedit.FedIT)) - {"__module__", "__doc__", "__qualname__"} <= {
        "name", "label", "heterogeneous_ranks", "merge", "__firstlineno__", "__static_attributes__"}
    method = fedit.FedIT(seed=1)
    _, updates, _ = _round(method, 1, [3, 1])
    got = method.global_adapter()[MODULE]
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    A = sum(w * u.factors[MODULE].A.double() for w, u in zip(p, updates))
    B = sum(w * u.factors[MODULE].scale * u.factors[MODULE].B.double() for w, u in zip(p, updates))
    assert torch.allclose(got.A.double(), A, atol=1e-6) and torch.allclose(got.B.double(), B, atol=1e-6)  # the paper's FedAvg

"""Checks a client's update against the plan it was sent, before any aggregation (torch only).

Nothing is broadcast, truncated or cast silently: an update that does not match its plan exactly
raises :class:`InvalidUpdateError`, and strategies move it to ``RoundResult.rejected``.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.lora.factors import LoraFactors, Update

__all__ = ["InvalidUpdateError", "validate_update", "MAX_NUM_EXAMPLES"]

MAX_NUM_EXAMPLES = 10**12
"""Largest ``num_examples`` an update may claim: more than any real client holds, small enough for float weights."""


class InvalidUpdateError(ValueError):
    """A client's update does not match its plan.

    Attributes:
        client_id: the client that sent it.
        module: the offending module path, or ``None`` for update-level problems.
        problem: what is wrong, with the value found.
        remedy: how to fix it.
    """

    def __init__(self, client_id: str, module: str | None, problem: str, remedy: str = "") -> None:
        self.client_id = client_id
        self.module = module
        self.problem = problem
        self.remedy = remedy
        where = f"module {module!r}" if module is not None else "update"
        message = f"client {client_id!r}, {where}: {problem}"
        super().__init__(f"{message}. {remedy}" if remedy else message)


def validate_update(
    update: Update,
    plan: ClientPlan,
    *,
    expected_shapes: Mapping[str, tuple[int, int]] | None = None,
    train_A: bool = True,
    expected_A: Mapping[str, torch.Tensor] | None = None,
    exact_rank: bool = False,
    train_B: bool = True,
    expected_B: Mapping[str, torch.Tensor] | None = None,
    subset: bool = False,
) -> None:
    """Raise :class:`InvalidUpdateError` on the first mismatch between ``update`` and ``plan``.

    Args:
        update: what the client sent.
        plan: the plan sent to that client this round.
        expected_shapes: module -> ``(d_out, d_in)`` of the base layer, where known.
        train_A: ``False`` when ``A`` was frozen (FFA-LoRA): then ``A`` must equal ``expected_A``.
        expected_A: module -> the frozen ``A`` at the plan's rank (rows beyond the update's rank ignored).
        train_B, expected_B: the same for a frozen ``B`` (RoLoRA's ``A`` rounds), ``B`` at the plan's
            alpha (columns beyond the update's rank ignored).
        exact_rank: require rank == plan rank (FedAvg-style methods); otherwise a lower rank is
            allowed (HetLoRA self-pruning) and only a higher one is rejected.
        subset: the client chooses which trainable modules it trains (Fed-HeLLo's Fisher selection):
            a non-empty subset of the plan's trainable modules is accepted.

    Checks, in order: client id, ``num_examples > 0``, unknown modules, missing trainable modules,
    then per module: factor type, dtype (real floating point), 2-D shapes with matching rank,
    rank vs plan, ``(d_out, d_in)`` vs ``expected_shapes``, positive finite alpha, NaN/Inf, frozen ``A``.
    """
    cid = update.client_id
    if cid != plan.client_id:
        raise InvalidUpdateError(cid, None, f"validated against the plan of client {plan.client_id!r}", "pass the plan sent to this client")
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0 or n > MAX_NUM_EXAMPLES:
        shown = f"{n!r}" if not isinstance(n, numbers.Integral) or abs(n) < 10**30 else f"an int of {len(str(abs(int(n))))} digits"
        raise InvalidUpdateError(cid, None, f"num_examples must be a positive int <= {MAX_NUM_EXAMPLES:.0e}, got {shown}",
                                 "report the number of local training examples")  # fmt: skip
    unknown = sorted(set(update.factors) - set(plan.ranks))
    if unknown:
        raise InvalidUpdateError(cid, unknown[0], f"module is not in the client's plan ({len(unknown)} unknown: {unknown[:3]})", "send only the modules of the plan")
    missing = sorted(plan.trainable_modules - set(update.factors))
    if subset and not set(update.factors) & plan.trainable_modules:
        raise InvalidUpdateError(cid, None, "no trainable module in the update", "train and send at least one module of the plan")
    if missing and not subset:
        raise InvalidUpdateError(cid, missing[0], f"trainable module missing from the update ({len(missing)} missing: {missing[:3]})", "send every trainable module of the plan")
    for module in sorted(update.factors):
        _check_module(cid, module, update.factors[module], plan, expected_shapes, exact_rank)
        if not train_A and expected_A is not None and module in expected_A:
            _check_frozen(cid, module, "A", update.factors[module].A, expected_A[module][: update.factors[module].rank])
        if not train_B and expected_B is not None and module in expected_B:
            _check_frozen(cid, module, "B", update.factors[module].B, expected_B[module][:, : update.factors[module].rank])


def _check_module(
    cid: str, module: str, f: LoraFactors, plan: ClientPlan, shapes: Mapping[str, tuple[int, int]] | None, exact_rank: bool
) -> None:
    if not isinstance(f, LoraFactors):
        raise InvalidUpdateError(cid, module, f"expected LoraFactors, got {type(f).__name__}", "wrap A, B, alpha in fedlora.lora.LoraFactors")
    for name, t in (("A", f.A), ("B", f.B)):
        if not isinstance(t, torch.Tensor):
            raise InvalidUpdateError(cid, module, f"{name} is a {type(t).__name__}, not a tensor", "send torch tensors")
        if not t.dtype.is_floating_point:
            raise InvalidUpdateError(cid, module, f"{name} has dtype {t.dtype}, not a real floating point type", "send float32, float16 or bfloat16 factors")
        if t.dim() != 2:
            raise InvalidUpdateError(cid, module, f"{name} has {t.dim()} dimensions {tuple(t.shape)}, expected 2", "A is [r, d_in], B is [d_out, r]")
    r, r_b = f.A.shape[0], f.B.shape[1]
    if r != r_b:
        raise InvalidUpdateError(cid, module, f"A has {r} rows but B has {r_b} columns", "A is [r, d_in] and B is [d_out, r] with the same r")
    planned = int(plan.ranks[module])
    if r < 1 or r > planned or (exact_rank and r != planned):
        rule = f"== {planned}" if exact_rank else f"in [1, {planned}]"
        raise InvalidUpdateError(cid, module, f"rank {r} but the plan allows rank {rule}", "train at the rank of the plan sent this round")
    if shapes is not None and module in shapes:
        d_out, d_in = shapes[module]
        if (f.B.shape[0], f.A.shape[1]) != (d_out, d_in):
            raise InvalidUpdateError(
                cid, module, f"(d_out, d_in) = {(f.B.shape[0], f.A.shape[1])}, expected {(d_out, d_in)}", "adapt the same base layer as the other clients"
            )
    alpha = f.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise InvalidUpdateError(cid, module, f"alpha must be a positive finite number, got {alpha!r}", "send the LoRA alpha of the plan")
    planned_alpha = plan.alphas.get(module)
    if planned_alpha is not None and not math.isclose(float(alpha) / r, float(planned_alpha) / planned, rel_tol=1e-6):
        raise InvalidUpdateError(cid, module, f"scale alpha / rank = {alpha!r} / {r} differs from the plan's {planned_alpha!r} / {planned}",
                                 "send the LoRA alpha of the plan (a rank pruned below the plan keeps the plan's scale)")  # fmt: skip
    for name, t in (("A", f.A), ("B", f.B)):
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InvalidUpdateError(cid, module, f"{name} has {bad} NaN/Inf values", "lower the learning rate or enable gradient clipping")


def _check_frozen(cid: str, module: str, name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """A frozen factor must equal what the server sent, up to the rounding of the update's dtype."""
    ref = expected.to(torch.float32)
    if ref.shape != got.shape:
        raise InvalidUpdateError(cid, module, f"frozen {name} has shape {tuple(ref.shape)}, update's {name} {tuple(got.shape)}", f"send {name} unchanged")
    tol = torch.finfo(got.dtype).eps * (float(ref.abs().max()) if ref.numel() else 0.0) + 1e-12
    err = float((got.to(torch.float32) - ref).abs().max()) if ref.numel() else 0.0
    if err > tol:
        raise InvalidUpdateError(cid, module, f"{name} differs from the frozen {name} by {err:.3g} (tolerance {tol:.3g})",
                                 f"keep {name} frozen (payload.train_{name} is False) and send it unchanged")  # fmt: skip

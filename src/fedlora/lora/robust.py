"""Robust averages of client tensors, coordinate by coordinate (pure torch).

For the averaging methods (FedIT, FFA-LoRA) as an alternative to the example-weighted mean, against
a minority of faulty or hostile clients (Yin et al., "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018):

- ``median``: the coordinate-wise median of the ``K`` tensors (for even ``K`` the mean of the two
  middle values), unweighted;
- ``trimmed_mean``: per coordinate, drop the ``floor(beta K)`` smallest and largest values and average
  the rest, unweighted (``beta`` in ``[0, 0.5)``).

Norm clipping of each update is DP-FedAvg without noise: ``[privacy] clip_norm = C``,
``noise_multiplier = 0`` (:mod:`fedlora.strategies.dp`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["ROBUST_RULES", "robust_average", "coordinate_median", "trimmed_mean"]

ROBUST_RULES = ("mean", "median", "trimmed_mean")


def coordinate_median(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median of same-shape tensors (float64; the two middle values averaged for even K)."""
    stack = torch.stack([t.to(torch.float64) for t in tensors])
    return torch.quantile(stack.reshape(len(tensors), -1), 0.5, dim=0, interpolation="midpoint").reshape(stack.shape[1:])


def trimmed_mean(tensors: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
    """Per coordinate, the mean after dropping the ``floor(beta K)`` smallest and largest values (float64)."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean needs 0 <= beta < 0.5, got {beta}")
    k = len(tensors)
    cut = math.floor(beta * k)
    ordered = torch.sort(torch.stack([t.to(torch.float64) for t in tensors]), dim=0).values
    return ordered[cut : k - cut].mean(dim=0)


def robust_average(tensors: Sequence[torch.Tensor], weights: Sequence[float], rule: str = "mean", beta: float = 0.1) -> torch.Tensor:
    """``Σ w_k t_k`` (``mean``, the weights sum to 1) or the unweighted ``median`` / ``trimmed_mean``, in float64."""
    if rule == "mean":
        return sum(float(w) * t.to(torch.float64) for t, w in zip(tensors, weights))
    if rule == "median":
        return coordinate_median(tensors)
    if rule == "trimmed_mean":
        return trimmed_mean(tensors, beta)
    raise ValueError(f"unknown robust rule {rule!r}; use one of {', '.join(ROBUST_RULES)}")

"""What a run is evaluated with, and how several models' metrics become one record.

A method with one global model is evaluated with it; a method without one (local-only training)
exposes ``evaluation_adapters()`` and the run reports the mean over those models. The engine calls
these without knowing which method it runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluation_adapters", "mean_over_models"]


def evaluation_adapters(strategy: Any) -> dict[str, Any]:
    """The adapters a run is evaluated with: ``strategy.evaluation_adapters()`` when the method has no
    single global model (local-only: one per client), else ``{"global": strategy.global_adapter()}``;
    ``{"base": {}}`` (the bare base model) before any client has trained."""
    per_client = getattr(strategy, "evaluation_adapters", None)
    adapters = per_client() if per_client is not None else {"global": strategy.global_adapter()}
    return adapters or {"base": {}}


def mean_over_models(results: list[dict[str, float]]) -> dict[str, float]:
    """One model's metrics as they are; for several, each metric's mean over the models, its ``_se``
    the standard error of that mean across models, and ``n_models``."""
    if len(results) == 1:
        return results[0]
    from fedlora.eval.stats import mean_se

    out: dict[str, float] = {"n_models": len(results)}
    keys = list(dict.fromkeys(k for r in results for k in r))  # models may see different tasks (personalised)
    for key in keys:
        if key.endswith("_se"):
            continue
        values = [r[key] for r in results if r.get(key) is not None]
        if key.endswith(("n_examples", "n_cls", "n_gen", "n_tokens", "majority", "chance")):
            out[key] = values[0]
        elif values:
            out[key], se = mean_se(values)
            if any(f"{key}_se" in r for r in results):
                out[f"{key}_se"] = se
    return out

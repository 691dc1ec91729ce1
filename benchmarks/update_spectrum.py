"""How large and how concentrated a run's global update is: per module of ``ΔW`` (the full global
update relative to the original base weights, :func:`fedlora.export.run_global_adapter`, for any
method), its Frobenius norm, its spectral norm ``σ_1`` and its stable rank ``‖ΔW‖_F² / σ_1²``
(how many directions carry the update), averaged over modules.

A diagnostic for comparing methods trained on the same data: two methods that average the same
client updates exactly (FLoRA, FlexLoRA) can still end with updates of a different shape, because
their clients start each round from different points (FLoRA: a fresh LoRA on the merged base;
FlexLoRA: the top-``r`` SVD of the global update). The singular values come from the factors
(:func:`fedlora.lora.linalg.svd_of_weighted_sum`), never from a dense ``ΔW``.

    python benchmarks/update_spectrum.py /tmp/bench/bucket_effect_ni/cells/*__uniform__seed0
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from fedlora.export import run_global_adapter
from fedlora.lora.linalg import svd_of_weighted_sum


def spectrum_summary(adapter) -> dict[str, float]:
    """Mean over modules of ``‖ΔW‖_F``, ``σ_1`` and the stable rank; the largest ``σ_1``."""
    fro, top, stable = [], [], []
    for f in adapter.values():
        if f.rank == 0:
            continue
        _, s, _ = svd_of_weighted_sum([f.B], [f.A], [f.scale])
        fro.append(float(s.norm()))
        top.append(float(s[0]))
        stable.append(float((s.norm() / s[0]) ** 2) if s[0] > 0 else 0.0)
    if not top:
        return {"modules": 0}
    return {"modules": len(top), "fro": statistics.fmean(fro), "sigma1": statistics.fmean(top),
            "sigma1_max": max(top), "stable_rank": statistics.fmean(stable)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (a bench cell folder or runs/<name>) with a checkpoint")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'run':45} {'round':>5} {'modules':>7} {'mean |dW|_F':>11} {'mean sigma1':>11} {'max sigma1':>10} {'stable rank':>11}")
    for run in args.runs:
        _, adapter, round_ = run_global_adapter(run)
        s = spectrum_summary(adapter)
        if not s["modules"]:
            print(f"{Path(run).name:45} {round_:5d} {0:7d}  (no update)")
            continue
        print(f"{Path(run).name:45} {round_:5d} {s['modules']:7d} {s['fro']:11.4f} {s['sigma1']:11.4f} {s['sigma1_max']:10.4f} "
              f"{s['stable_rank']:11.2f}")


if __name__ == "__main__":
    main()

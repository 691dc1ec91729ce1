"""Regenerate docs/results.md (and docs/results/*.png) from the latest bench output folders.

    python benchmarks/make_results_doc.py            # the quick benches (runs/bench/*_quick)
    python benchmarks/make_results_doc.py --full     # the full benches, where they have finished cells

Equivalent to ``fedlora bench doc runs/bench/bucket_effect_quick runs/bench/memory_constrained_quick``
with the introduction below. Run the benches first:

    OMP_NUM_THREADS=1 fedlora bench benchmarks/bucket_effect.toml --quick --threads 1 --seeds 0,1,2
    OMP_NUM_THREADS=1 fedlora bench benchmarks/memory_constrained.toml --quick --threads 1 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedlora.bench.doc import write_results_doc

INTRO = """\
Two benches compare the federated LoRA methods on one engine, with the same data, model, seeds and
budgets for every method: **bucket effect** (FlexLoRA's claim, Bai et al., NeurIPS 2024: heterogeneous
LoRA ranks) and **memory-constrained** (Fed-pilot's claim: clients whose memory cannot hold full LoRA).
Every cell is one `fedlora run` in its own folder; traffic is counted by the engine from the factor
tensors actually sent (fp32 `A` and `B` of every module a client receives or returns), and wall time is
the run's own clock on a CPU shared with other jobs, so compare it only within one bench.

How to read this page. The *quick* variants (suffix `_quick`) take minutes per seed on two CPU cores:
four clients, two rounds of four local steps, a few dozen evaluation examples and teacher-forced
Rouge-L (one forward pass, no generation). The runs below used three seeds (`--seeds 0,1,2`; the quick
files default to one). A seed fixes the data split and the evaluation examples, so methods are compared
*paired by seed*; with about 12 held-out examples one example moves Rouge-L by several points, and
at this scale differences of a few percent are within noise. The papers' claims (FlexLoRA: up to 3.1%
average improvement over its baselines on unseen tasks; Fed-pilot: better accuracy than its baselines
under memory limits) need the full benches (3 seeds, 8 clients, all distributions and methods, a few
hours each): `fedlora bench benchmarks/bucket_effect.toml` and
`fedlora bench benchmarks/memory_constrained.toml`, then `python benchmarks/make_results_doc.py --full`.

Fed-pilot here is fedlora's own version (the paper's code and formulas are not public; see
docs/fedpilot.md); its baselines use the same memory model, the same budgets and the same server
aggregation, so only the choice of modules differs. On a shared machine run the benches with
`OMP_NUM_THREADS=1 ... --threads 1`: with the default two OpenMP threads per process and other jobs
on the cores, a SmolLM2 LoRA step took 82 s instead of 3.8 s (measured here).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="use runs/bench/bucket_effect and runs/bench/memory_constrained")
    parser.add_argument("--runs", default="runs/bench", help="folder that holds the bench output folders")
    parser.add_argument("--doc", default="docs/results.md")
    args = parser.parse_args()
    names = ["bucket_effect", "memory_constrained"] if args.full else ["bucket_effect_quick", "memory_constrained_quick"]
    folders = [Path(args.runs) / n for n in names if (Path(args.runs) / n / "bench.json").is_file()]
    if not folders:
        raise SystemExit(f"no bench output under {args.runs} for {names}; run the benches first (see this script's docstring)")
    print(f"wrote {write_results_doc(folders, args.doc, intro=INTRO)}")


if __name__ == "__main__":
    main()

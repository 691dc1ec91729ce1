"""``fedlora bench``: federated LoRA methods side by side over resource distributions and seeds.

grid.py       bench files (base run config + methods x distributions x seeds) -> validated cells
baselines.py  baseline allocations: drop-small, last-layers, random-modules (same memory model as Fed-pilot)
runner.py     runs the cells, one run folder each, resumable cell by cell
results.py    per-cell rows, mean ± std over seeds, CSV and Markdown tables
plots.py      metric per round, final metric, communication per round, wall time (PNG)
doc.py        docs/results.md from bench output folders, with the papers' claims checked
cli.py        ``fedlora bench BENCH.toml [--quick] [--out DIR] [--resume]`` and ``fedlora bench doc``
"""

from fedlora.bench.cli import main
from fedlora.bench.grid import Bench, BenchError, Cell, Claim, Variant, load_bench, parse_bench
from fedlora.bench.runner import cell_dir, cell_state, run_cell, run_grid

__all__ = ["main", "Bench", "BenchError", "Cell", "Claim", "Variant", "load_bench", "parse_bench", "cell_dir", "cell_state",
           "run_cell", "run_grid"]  # fmt: skip

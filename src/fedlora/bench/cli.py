"""``fedlora bench``: run methods side by side over a grid, then tables and plots.

    fedlora bench BENCH.toml [--quick] [--out DIR] [--resume] [--set KEY=VALUE ...] [--seeds 0,1,2] [--only TEXT ...]
                             [--list] [--report] [--max-cells N] [--quiet] [--threads N] [--preregister]
    fedlora bench doc OUT_DIR [OUT_DIR ...] [--doc docs/results.md] [--assets docs/results] [--intro TEXT | --intro-file FILE]

Without ``--resume`` an output folder that already holds started cells is refused; with it, done
cells are skipped and partial ones resume from their checkpoints. After the runs (or with
``--report`` alone) ``OUT/results.csv``, ``summary.csv``, ``results.md`` and ``plots/*.png`` are
(re)written from every finished cell. Exit status: 0 ok, 1 some cell failed, 2 bad bench file, 130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "write_report"]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlora bench", description="Run federated LoRA methods side by side over "
                                "resource distributions and seeds; write tables and plots.")  # fmt: skip
    p.add_argument("bench", help="bench file (TOML), e.g. benchmarks/bucket_effect.toml")
    p.add_argument("--quick", action="store_true", help="run the bench's quick variant (<stem>_quick.toml or bench.quick)")
    p.add_argument("--out", help="output folder (default: runs/bench/<bench name>)")
    p.add_argument("--resume", action="store_true", help="skip finished cells and resume partial ones from their checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config value in every cell, e.g. --set train.local_steps=2")
    p.add_argument("--seeds", help="comma-separated seeds replacing bench.seeds, e.g. 0,1,2")
    p.add_argument("--only", action="append", default=[], metavar="TEXT", help="run only cells whose id contains TEXT (repeatable: any)")
    p.add_argument("--list", action="store_true", help="list the cells and their state, run nothing")
    p.add_argument("--report", action="store_true", help="only rebuild tables and plots from the finished cells")
    p.add_argument("--max-cells", type=int, help="stop after running this many cells")
    p.add_argument("--publish", help="publish each finished cell to this folder (e.g. docs/results/<bench>): "
                   "cells/<cell>.json, bench.json and comparisons.json; cells published there count as done")
    p.add_argument("--preregister", action="store_true", help="write the pre-registration of the bench's [claims] "
                   "(preregistration.json: the design, its hash, the git commit) into --publish (else --out) and run nothing; "
                   "commit it before the first cell")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    p.add_argument("--threads", type=int, help="torch CPU threads of every cell (same as --set run.threads=N; on a shared "
                   "machine 1 avoids OpenMP oversubscription, which slowed a LoRA step down 20x here)")  # fmt: skip
    return p


def build_doc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlora bench doc", description="Write docs/results.md from bench output folders.")
    p.add_argument("out_dirs", nargs="+", help="bench output folders (runs/bench/<name>)")
    p.add_argument("--doc", default="docs/results.md", help="the Markdown file to write")
    p.add_argument("--assets", help="folder for the PNG plots (default: <doc folder>/results)")
    intro = p.add_mutually_exclusive_group()
    intro.add_argument("--intro", default="", help="Markdown text placed under the title")
    intro.add_argument("--intro-file", help="a Markdown file whose text is placed under the title")
    return p


def write_report(bench, out_dir: str | Path) -> dict[str, Path]:
    """Tables and plots of the finished cells of ``bench`` under ``out_dir``."""
    from fedlora.bench.plots import plot_bench
    from fedlora.bench.results import aggregate, collect, write_tables

    labels = {m.name: m.label for m in bench.methods}
    rows = collect(out_dir, [c.id for c in bench.cells])
    aggs = aggregate(rows, bench.metrics)
    paths = write_tables(rows, aggs, bench.metrics, out_dir, title=bench.name, labels=labels)
    plots = plot_bench(rows, aggs, bench.primary_metric, Path(out_dir) / "plots", methods=[m.name for m in bench.methods],
                       distributions=[d.name for d in bench.distributions], labels=labels)  # fmt: skip
    return paths | {p.stem: p for p in plots}


def _list(bench, out_dir: Path) -> int:
    from fedlora.bench.results import collect, estimate_seconds
    from fedlora.bench.runner import cell_dir, cell_state

    states = {c.id: cell_state(cell_dir(out_dir, c)) for c in bench.cells}
    for c in bench.cells:
        print(f"{states[c.id]:8} {c.id}  (strategy {c.config.strategy.name}"
              f"{', plan ' + c.method.plan if c.method.plan else ''})")  # fmt: skip
    pending = [c.method.name for c in bench.cells if states[c.id] != "done"]
    done = len(bench.cells) - len(pending)
    left = estimate_seconds(pending, collect(out_dir, [c.id for c in bench.cells]))
    eta = ("no finished cell to estimate the time from" if left is None else
           f"about {left / 3600:.1f} h in one process, at the mean wall time of finished cells of the same method")
    print(f"{done} of {len(bench.cells)} cells done; {len(pending)} left" + (f": {eta}" if pending else ""))
    _print_claims(bench, out_dir)
    return 0


def _doc(argv: Sequence[str]) -> int:
    from fedlora.bench.doc import write_results_doc

    args = build_doc_parser().parse_args(argv)
    missing = [d for d in args.out_dirs if not (Path(d) / "bench.json").is_file()]
    if missing:
        print(f"fedlora bench doc: {', '.join(missing)} hold no bench.json; pass folders written by `fedlora bench`", file=sys.stderr)
        return EXIT_USAGE
    intro = args.intro
    if args.intro_file:
        try:
            intro = Path(args.intro_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            print(f"fedlora bench doc: --intro-file {args.intro_file}: {err.strerror}; pass a readable Markdown file", file=sys.stderr)
            return EXIT_USAGE
    elif intro.endswith(".md") and "\n" not in intro and Path(intro).is_file():
        print(f"fedlora bench doc: --intro {intro!r} is a file name; use --intro-file {intro} to place its text", file=sys.stderr)
        return EXIT_USAGE
    path = write_results_doc(args.out_dirs, args.doc, assets=args.assets, intro=intro)
    print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace, bench, out_dir: Path, argv: Sequence[str]) -> int:
    """Run the grid; the number of failed cells, or a negative exit status when it could not run."""
    from fedlora.bench.design import PreregistrationError
    from fedlora.bench.runner import run_grid

    only = (lambda c: any(t in c.id for t in args.only)) if args.only else None
    command = "fedlora bench " + " ".join(shlex.quote(a) for a in argv)
    try:
        report = run_grid(bench, out_dir, resume=args.resume, only=only, verbose=not args.quiet, command=command,
                          max_cells=args.max_cells, publish=args.publish)  # fmt: skip
    except (FileExistsError, PreregistrationError) as err:
        print(f"fedlora bench: {err}", file=sys.stderr)
        return -EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fedlora bench: interrupted; `fedlora bench {args.bench}{' --quick' if args.quick else ''} --out {out_dir} "
              "--resume` continues without redoing finished cells", file=sys.stderr)  # fmt: skip
        return -EXIT_INTERRUPTED
    return len(report.failed)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedlora bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "doc":
        return _doc(argv[1:])
    args = build_parser().parse_args(argv)
    from fedlora.bench.grid import load_bench
    from fedlora.bench.runner import record_bench

    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        overrides = args.overrides + ([f"run.threads={args.threads}"] if args.threads else [])
        bench = load_bench(args.bench, quick=args.quick, overrides=overrides, seeds=seeds)
    except ValueError as err:  # BenchError, or --seeds that are not integers
        print(f"fedlora bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.out) if args.out else Path("runs") / "bench" / bench.name
    if args.preregister:
        return _preregister(bench, Path(args.publish) if args.publish else out_dir)
    if args.list:
        return _list(bench, out_dir)
    failed = 0
    if args.report:
        record_bench(bench, out_dir, invocation=False)  # labels and descriptions as the bench file says now
    else:
        failed = _run(args, bench, out_dir, argv)
        if failed < 0:
            return -failed
    paths = write_report(bench, out_dir)
    print(f"results: {paths['markdown']} ({paths['cells_csv'].name}, {paths['summary_csv'].name}); plots in {out_dir / 'plots'}")
    _print_claims(bench, Path(args.publish) if args.publish else out_dir)
    if failed:
        print(f"fedlora bench: {failed} cell(s) failed; see cell_error.log in their folders", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _print_claims(bench, folder: Path) -> None:
    from fedlora.bench.runner import claim_status_lines

    for line in claim_status_lines(bench, folder):
        print(line)


def _preregister(bench, folder: Path) -> int:
    from fedlora.bench.design import PreregistrationError
    from fedlora.bench.runner import preregister, record_bench

    if not bench.claims:
        print(f"fedlora bench: {bench.path} declares no [claims.<name>] table; nothing to pre-register", file=sys.stderr)
        return EXIT_USAGE
    try:
        path = preregister(bench, folder)
    except PreregistrationError as err:
        print(f"fedlora bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    record_bench(bench, folder, invocation=False)  # bench.json: the grid the doc and the verdicts read
    print(f"pre-registered {len(bench.claims)} claim(s) of {bench.name} in {path}; commit it before the first cell runs")
    return 0

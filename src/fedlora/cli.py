"""``fedlora``: run, plan, report and export federated LoRA runs; ``flower`` and ``bench`` dispatch on.

Commands:
    fedlora run CONFIG.toml [--set KEY=VALUE ...] [--resume] [--out DIR] [--quiet]
    fedlora plan CONFIG.toml [--set KEY=VALUE ...] [--out DIR]
    fedlora report RUN_DIR [RUN_DIR ...] [--plots DIR]
    fedlora export RUN_DIR [--merged] [--out DIR] [--rank R] [--client ID]
    fedlora flower ...        (multi-machine runs, see ``fedlora flower --help``)
    fedlora bench ...         (benchmarks, when ``fedlora.bench`` is installed)

A config problem prints one message listing every error and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlora", description="Federated LoRA fine-tuning of LLMs across heterogeneous clients.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run (or resume) a federated fine-tuning run from a TOML config")
    run.add_argument("config", help="run config (TOML), e.g. examples/quickstart.toml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.lr=1e-3 (repeatable; values are TOML literals)")
    run.add_argument("--resume", action="store_true", help="continue the run in the run folder from its last checkpoint")
    run.add_argument("--out", help="run folder (default: run.out_dir/run.name)")
    run.add_argument("--quiet", action="store_true", help="no progress output; print only the final summary")
    plan = sub.add_parser("plan", help="show which client trains what (per-client table and a heat map PNG)")
    plan.add_argument("config")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--out", help="folder for plan_heatmap.png (default: the run folder)")
    report = sub.add_parser("report", help="print a run's summary table again and write PNG plots per round "
                            "(several run folders: a comparison table)")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--plots", help="folder for the PNG plots of one run (default: RUN_DIR/plots)")
    export = sub.add_parser("export", help="write a run's global adapter in PEFT format (and the merged model)")
    export.add_argument("run_dir")
    export.add_argument("--merged", action="store_true", help="also save the base model with the adapter merged in")
    export.add_argument("--out", help="target folder (default: RUN_DIR/export)")
    export.add_argument("--client", help="export this client's personalised adapter (FedSA-LoRA, FedDPA) instead of the global one")
    export.add_argument("--rank", type=int, help="export every module at its best rank-R approximation and print the "
                        "spectral energy kept (FlexLoRA's global state is at the stacked rank)")
    for name, text in (("flower", "multi-machine runs with Flower (fedlora.flower)"), ("bench", "benchmarks (fedlora.bench)")):
        sub.add_parser(name, help=text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _console():
    """A rich console for stdout; 140 columns when it is not a terminal (pipes, logs, tests)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def _dispatch(module_name: str, argv: list[str], what: str) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"fedlora {what}: {module_name} is not available in this installation", file=sys.stderr)
            return EXIT_USAGE
        raise
    return int(module.main(argv) or 0)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedlora.config import load_config

    cfg = load_config(args.config, args.overrides)  # every config error is reported before the training stack loads
    from fedlora.engine.progress import Progress, RichProgress
    from fedlora.engine.run import Engine
    from fedlora.report import print_summary

    progress = Progress() if args.quiet else RichProgress()
    result = Engine(cfg, args.out, progress=progress).run(resume=args.resume)
    print_summary(result.summary, _console(), title=f"{cfg.run.name} ({cfg.strategy.name})")
    print(f"run folder: {result.run_dir}  (fedlora report {result.run_dir} | fedlora export {result.run_dir})")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from fedlora.allocation.report import plan_heatmap, plan_table
    from fedlora.config import load_config
    from fedlora.engine.build import build_spec, load_base_model
    from fedlora.engine.data import build_data
    from fedlora.engine.plans import Planner
    from fedlora.engine.run import run_dir_for
    from fedlora.engine.sampling import client_ids

    cfg = load_config(args.config, args.overrides)
    model, tokenizer = load_base_model(cfg.model)
    spec = build_spec(model, cfg.model)
    planner = Planner(cfg, spec, client_ids(cfg.data.num_clients))
    if planner.needs_importance:
        planner.score_clients(model, tokenizer, build_data(cfg).clients)
    rep = planner.plan_report(1)
    precisions = rep.get("precisions")
    _console().print(plan_table(rep["plans"], rep["predictions"], rep["budgets"], rep["values"], spec=spec,
                                precisions=precisions if precisions and len(set(precisions)) > 1 else None))  # fmt: skip
    out = Path(args.out) if args.out else run_dir_for(cfg)
    path = plan_heatmap(rep["plans"], spec, out / "plan_heatmap.png", title=f"{cfg.run.name}: clients training each module")
    print(f"allocation {planner.allocation}; heat map: {path}")
    return 0


def _run_label(run_dir: Path) -> str:
    import tomllib

    try:
        strategy = tomllib.loads((run_dir / "config.toml").read_text())["strategy"]["name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return run_dir.name
    return run_dir.name if strategy in run_dir.name else f"{run_dir.name} ({strategy})"


def _warn(text: str) -> None:
    print(f"fedlora: warning: {text}", file=sys.stderr, flush=True)


def _planned_rounds(run_dir: Path) -> int | None:
    import tomllib

    try:
        return int(tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))["run"]["rounds"])
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError):
        return None


def _related(run_dir: Path) -> dict[str, str]:
    import tomllib

    from fedlora.report import related_map

    try:
        return related_map(tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))["data"].get("heldout_related", []))
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return {}


def _unfinished(run_dir: Path, records: list[dict]) -> str | None:
    """A warning when the run stopped before its planned rounds (its figures are of an earlier model)."""
    planned, done = _planned_rounds(run_dir), max((int(r["round"]) for r in records if r.get("type") == "round"), default=0)
    if planned is None or done >= planned:
        return None
    return (f"{run_dir} is unfinished: {done} of {planned} rounds; these figures are after round {done} "
            f"(`fedlora run {run_dir / 'config.toml'} --out {run_dir} --resume` continues it)")


def _cmd_report(args: argparse.Namespace) -> int:
    from fedlora.engine.metrics_log import read_metrics
    from fedlora.report import compare_table, plot_run, print_summary, run_summary

    dirs = [Path(d) for d in args.run_dirs]
    records = {d: read_metrics(d) for d in dirs}
    for d, recs in records.items():
        note = _unfinished(d, recs)
        if note:
            _warn(note)
    if len(dirs) > 1:
        _console().print(compare_table({_run_label(d): run_summary(r) for d, r in records.items()}))
        return 0
    (run_dir, recs), = records.items()
    print_summary(run_summary(recs) | {"heldout_related": _related(run_dir)}, _console(), title=_run_label(run_dir))
    plots = plot_run(recs, args.plots or run_dir / "plots")
    print("plots: " + ", ".join(str(p) for p in plots))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fedlora.export import export_run

    try:
        paths = export_run(args.run_dir, args.out, merged=args.merged, rank=args.rank, client=args.client)
    except ValueError as err:
        print(f"fedlora export: {err}", file=sys.stderr)
        return EXIT_USAGE
    if paths["round"] < paths["rounds"]:
        _warn(f"{args.run_dir} is unfinished: exported the checkpoint after round {paths['round']} of {paths['rounds']}")
    for kind in ("adapter", "merged"):
        if kind in paths:
            print(f"{kind}: {paths[kind]}")
    if "energy" in paths:
        print(f"rank {args.rank}: spectral energy kept {100 * paths['energy']:.2f}% overall, "
              f"{100 * paths['energy_min']:.2f}% in the module that keeps least")
    print(f"load with: PeftModel.from_pretrained(base_model, {str(paths['adapter'])!r})")
    return 0


_COMMANDS = {"run": _cmd_run, "plan": _cmd_plan, "report": _cmd_report, "export": _cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedlora`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "flower":
        return _dispatch("fedlora.flower.cli", argv[1:], "flower")
    if argv and argv[0] == "bench":
        return _dispatch("fedlora.bench", argv[1:], "bench")
    args = build_parser().parse_args(argv)
    from fedlora.config import ConfigError
    from fedlora.errors import RunError

    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, RunError, FileNotFoundError) as err:
        print(f"fedlora {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fedlora {args.command}: interrupted; `fedlora run CONFIG --resume` continues from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

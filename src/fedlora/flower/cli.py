"""``fedlora flower ...``: from a fedlora config to a running Flower federation, no Flower code.

Commands:

- ``app CONFIG.toml --out DIR``: write a Flower app folder for ``flwr run`` (config embedded).
- ``certs DIR``: a TLS CA, a SuperLink certificate for 127.0.0.1/localhost and SuperNode keys.
- ``local CONFIG.toml --nodes N [--secure]``: start a SuperLink and N SuperNodes on loopback,
  run the federation, stop them; results under ``--workdir``.
- ``simulate CONFIG.toml --nodes N``: the same app on Flower's own simulation runtime
  (``flwr run APP local``, Ray; fedlora's former in-process Grid used Flower internals and now lives in
  the tests only, for a
  quick check of a config).

``--smoke`` (app, local, simulate) swaps the config for a tiny random model and synthetic data,
to check the Flower set-up itself in seconds.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]

SMOKE_RECIPE = "fedlora.flower.smoke:recipes"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedlora flower``; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ImportError as err:
        if "flwr" in str(err):
            print("fedlora flower needs Flower: pip install 'fedlora[flower]'", file=sys.stderr)
            return 1
        raise
    except (ValueError, RuntimeError, OSError) as err:
        print(f"fedlora flower {args.command}: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlora flower", description="Run fedlora federations on Flower (flwr 1.41-1.42).")
    sub = p.add_subparsers(dest="command")

    a = sub.add_parser("app", help="write a Flower app folder for a fedlora config")
    _config_args(a)
    a.add_argument("--out", required=True, type=Path, help="app folder to write")
    a.add_argument("--name", default="fedlora-run", help="Flower app name (default fedlora-run)")
    a.set_defaults(func=_cmd_app)

    c = sub.add_parser("certs", help="write TLS certificates and SuperNode keys")
    c.add_argument("dir", type=Path)
    c.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs (default 2)")
    c.add_argument("--host", action="append", help="SuperLink host name or IP for the certificate (repeatable; default 127.0.0.1 and localhost)")
    c.set_defaults(func=_cmd_certs)

    for name, func, text in (("local", _cmd_local, "run on a SuperLink and SuperNodes started on loopback"),
                             ("simulate", _cmd_simulate, "run on Flower's simulation runtime")):  # fmt: skip
        s = sub.add_parser(name, help=text)
        _config_args(s)
        s.add_argument("--nodes", type=int, default=0, help="SuperNodes (default: one per configured client)")
        s.add_argument("--workdir", type=Path, default=Path(f"fedlora-flower-{name}"), help=f"app, logs and results (default ./fedlora-flower-{name})")
        s.add_argument("--memory-gb", default="", help="memory budget per node in GiB, comma-separated (node k gets item k %% len), "
                       "e.g. 2,4,8; with --set plans-from=resources the plans follow them")  # fmt: skip
        if name == "local":
            s.add_argument("--secure", action="store_true", help="TLS and SuperNode authentication (fresh CA and keys)")
        s.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped (default 3600)")
        s.set_defaults(func=func)
    return p


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="fedlora TOML config (omit with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny random model and synthetic data instead of the config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Flower setting (round-timeout=300, min-replies=2, plans-from=resources, ...) or a fedlora "
                        "config override (train.lr=1e-3); repeatable")  # fmt: skip


def _settings(args) -> tuple[str, dict[str, Any]]:
    """``(config text, run-config settings)`` from the config file, ``--smoke`` and ``--set``."""
    if args.smoke:
        text, settings = "", {"fedlora-recipe": SMOKE_RECIPE}
    elif args.config is None:
        raise ValueError("give a fedlora config file (or --smoke)")
    else:
        text, settings = args.config.read_text(), {}
    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set round-timeout=300 or --set train.lr=1e-3")
        if "." in key:  # section.key: a fedlora config override
            overrides.append(item.strip())
            continue
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value
    if overrides:
        settings["fedlora-set"] = "; ".join(overrides)
    return text, settings


def _cmd_app(args) -> int:
    from fedlora.flower.app_dir import write_app

    text, settings = _settings(args)
    root = write_app(text, args.out, name=args.name, options=settings)
    print(f"wrote Flower app {root}\nrun it with:  flwr run {root} <superlink-connection> --stream   (see docs/flower.md)")
    return 0


def _cmd_certs(args) -> int:
    from fedlora.flower.certs import DEFAULT_HOSTS, write_credentials

    creds = write_credentials(args.dir, num_nodes=args.nodes, hosts=tuple(args.host or DEFAULT_HOSTS))
    print(f"CA certificate:      {creds.ca_cert}\nSuperLink cert/key:  {creds.server_cert} {creds.server_key}")
    for i, key in enumerate(creds.node_keys):
        print(f"SuperNode {i} keys:    {key} (private), {creds.node_public_key(i)} (register this one)")
    return 0


def _node_configs(args, settings: dict[str, Any], text: str) -> list[dict[str, Any]]:
    from fedlora.flower.recipe import recipes_from_run_config

    nodes = args.nodes
    if nodes <= 0:
        server, _ = recipes_from_run_config({**settings, "fedlora-config": text})
        nodes = len(server.client_ids)
    if args.smoke:
        settings.setdefault("smoke-clients", nodes)
    configs = [{"partition-id": k, "num-partitions": nodes} for k in range(nodes)]
    budgets = [float(x) for x in args.memory_gb.split(",") if x.strip()]
    for k, node_config in enumerate(configs):
        if budgets:
            node_config["memory-gb"] = budgets[k % len(budgets)]
    return configs


def _cmd_local(args) -> int:
    from fedlora.flower.app_dir import write_app
    from fedlora.flower.deploy import LocalFederation

    text, settings = _settings(args)
    workdir = args.workdir.resolve()
    settings.setdefault("out-dir", str(workdir / "results"))
    nodes = _node_configs(args, settings, text)
    app = write_app(text, workdir / "app", options=settings)
    with LocalFederation(workdir / "flower", secure=args.secure) as fed:
        port = fed.start_superlink()
        print(f"SuperLink on 127.0.0.1:{port} ({'TLS + SuperNode authentication' if args.secure else 'insecure'}); logs in {fed.workdir / 'logs'}")
        for k, node_config in enumerate(nodes):
            fed.start_supernode(k, node_config)
        print(f"{len(nodes)} SuperNodes started; running (flwr run --stream) ...", flush=True)
        out = fed.run_app(app, timeout=args.timeout)
    print("\n".join(line for line in out.splitlines() if "[fedlora]" in line))
    return _summary(Path(settings["out-dir"]))


def _cmd_simulate(args) -> int:
    text, settings = _settings(args)
    workdir = args.workdir.resolve()
    settings.setdefault("out-dir", str(workdir / "results"))
    nodes = _node_configs(args, settings, text)
    from fedlora.flower.app_dir import write_app
    from fedlora.flower.simulation import simulate_with_flower

    if any("memory-gb" in n for n in nodes):
        raise ValueError("--memory-gb sets --node-config per node, which Flower's simulation runtime does not take; "
                         "use `fedlora flower local` (one SuperNode per node on loopback) for per-node budgets")  # fmt: skip
    app = write_app(text, workdir / "app", options=settings)
    print(f"Flower simulation runtime: {len(nodes)} simulated SuperNodes (flwr run {app} local); log in {workdir}", flush=True)
    out = simulate_with_flower(app, workdir, num_supernodes=len(nodes), timeout=args.timeout)
    print("\n".join(line for line in out.splitlines() if "[fedlora]" in line))
    return _summary(Path(settings["out-dir"]))


def _summary(out_dir: Path) -> int:
    """Print the run's before/after table (as ``fedlora run`` does); 1 when no round finished."""
    from fedlora.engine.metrics_log import read_metrics
    from fedlora.report import print_summary, run_summary

    records = read_metrics(out_dir) if (out_dir / "metrics.jsonl").exists() else []
    rounds = [r for r in records if r.get("type") == "round"]
    if not rounds:
        print(f"no round finished; see the logs (results folder {out_dir})", file=sys.stderr)
        return 1
    print_summary(run_summary(records), title=f"fedlora on Flower ({out_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bench files: one base run config and a grid of methods x resource distributions x seeds.

A bench file is TOML::

    [bench]
    name = "bucket_effect"            # default output folder: runs/bench/<name>
    description = "..."
    seeds = [0, 1, 2]
    primary_metric = "heldout/rougeL"  # <split>/<metric> of the last evaluation (split: eval | heldout | train)
    metrics = ["heldout/rougeL", "heldout/rougeL_tf", "eval/rougeL"]
    base = "../examples/quickstart.toml"   # optional run config the [base] tables override (path relative to this file)
    extends = "other_bench.toml"           # optional: start from another bench file (deep merge)
    quick = "bucket_effect_quick.toml"     # `--quick` runs this file (default: <stem>_quick.toml next to this one)
    methods = ["flexlora", "fedit-min"]    # optional: run only these methods, in this order
    distributions = ["uniform"]            # optional: run only these distributions

    [base.run]                         # the run config shared by every cell (same schema as `fedlora run`)
    rounds = 3
    [base.model]
    name = "bundled:smollm2"

    [methods.fedit-min]                # a method: a label, run-config overrides, optionally a bench `plan`
    label = "FedIT (min rank)"
    strategy.name = "fedit"
    clients.allocation = "uniform"

    [methods.fedit-max-drop]
    strategy.name = "fedit"
    plan = "drop-small"                # bench-side allocation, see fedlora.bench.baselines.PLAN_MODES

    [distributions.uniform]            # a resource distribution: run-config overrides
    clients.rank_distribution = "uniform"

    [bench.claim]                      # optional: the paper's claim the doc checks against the numbers
    text = "FlexLoRA reports up to 3.1% average improvement on unseen tasks."
    method = "flexlora"
    baselines = ["fedit-min", "fedit-max-drop"]

A cell's config is ``base <- distribution <- method <- {run.seed, run.name} <- --set overrides``;
when an override changes ``strategy.name`` the whole ``[strategy]`` table is replaced (so another
method's arguments do not leak in). Every cell is validated up front and every problem reported
at once (:class:`BenchError`).
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedlora.bench.baselines import PLAN_MODES
from fedlora.bench.design import ClaimSpec, evaluated_rounds, parse_claims
from fedlora.config import SECTIONS, Config, ConfigError, apply_overrides, parse_config

__all__ = ["BenchError", "Variant", "Claim", "Cell", "Bench", "load_bench", "parse_bench", "deep_merge", "METRIC_SPLITS"]

METRIC_SPLITS = ("eval", "heldout", "train")
_BENCH_KEYS = ("name", "description", "seeds", "metrics", "primary_metric", "base", "extends", "quick", "methods",
               "distributions", "claim")  # fmt: skip
_VARIANT_KEYS = ("label", "description", "plan", "distributions")
_TOP_KEYS = ("bench", "base", "methods", "distributions", "claims")


class BenchError(ValueError):
    """A bench file has one or more problems; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str], source: str = "bench file") -> None:
        self.errors = list(dict.fromkeys(errors))
        noun = "error" if len(self.errors) == 1 else "errors"
        super().__init__(f"invalid {source} ({len(self.errors)} {noun}):\n" + "\n".join(f"  - {e}" for e in self.errors))


@dataclass(frozen=True)
class Variant:
    """A named grid value (a method or a resource distribution): run-config overrides and, for
    methods, an optional bench-side ``plan`` (``drop-small`` | ``last-layers`` | ``random-modules``)."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)
    plan: str | None = None
    description: str = ""
    distributions: tuple[str, ...] | None = None  # methods: run only under these (a reference that does not depend on them)


@dataclass(frozen=True)
class Claim:
    """A published claim to check: ``method`` against each of ``baselines`` on the primary metric."""

    text: str
    method: str
    baselines: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One engine run of the grid: a method under a distribution with a seed, and its validated config."""

    method: Variant
    distribution: Variant
    seed: int
    config: Config
    raw: dict

    @property
    def id(self) -> str:
        return f"{self.method.name}__{self.distribution.name}__seed{self.seed}"


@dataclass(frozen=True)
class Bench:
    """A parsed bench file: its grid and how to read its results."""

    name: str
    path: Path | None
    description: str
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    methods: tuple[Variant, ...]
    distributions: tuple[Variant, ...]
    cells: tuple[Cell, ...]
    claim: Claim | None = None
    quick_path: Path | None = None
    claims: tuple[ClaimSpec, ...] = ()  # pre-registered claims (fedlora.bench.design)
    base: dict = field(default_factory=dict)  # the [base] run config every cell starts from
    overrides: tuple[str, ...] = ()  # --set overrides applied to every cell

    def method(self, name: str) -> Variant:
        return next(m for m in self.methods if m.name == name)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], *, replace_strategy: bool = False) -> dict:
    """``override`` merged into a deep copy of ``base`` (tables merge, other values replace).

    With ``replace_strategy``, an override of ``strategy.name`` to another method replaces the
    whole ``strategy`` table.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if replace_strategy and key == "strategy" and isinstance(value, Mapping) and isinstance(old, Mapping) \
                and "name" in value and value["name"] != old.get("name"):  # fmt: skip
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _read_toml(path: Path, errors: list[str]) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append(f"{path}: no such file")
    except tomllib.TOMLDecodeError as err:
        errors.append(f"{path}: not valid TOML: {err}")
    return {}


def _read_bench_raw(path: Path, errors: list[str], seen: tuple[Path, ...] = ()) -> dict:
    """The bench file's tables with ``extends`` resolved (parent first) and ``base`` files read."""
    path = path.resolve()
    if path in seen:
        errors.append(f"{path}: `extends` forms a cycle ({' -> '.join(p.name for p in (*seen, path))})")
        return {}
    raw = _read_toml(path, errors)
    bench = raw.get("bench", {}) if isinstance(raw.get("bench", {}), dict) else {}
    parent: dict = {}
    if bench.get("extends"):
        parent = _read_bench_raw(path.parent / str(bench["extends"]), errors, (*seen, path))
        for key in ("quick", "name", "_path"):  # the child's own: its quick sibling, its name (default: its file name)
            parent.get("bench", {}).pop(key, None)
    if bench.get("base"):
        base_file = _read_toml(path.parent / str(bench["base"]), errors)
        raw["base"] = deep_merge(base_file, raw.get("base", {}), replace_strategy=True)
    merged = deep_merge(parent, raw)
    merged.setdefault("bench", {})["_path"] = str(path)
    return merged


def _variants(raw: Any, kind: str, errors: list[str]) -> list[Variant]:
    if not isinstance(raw, dict) or not raw:
        errors.append(f"[{kind}]: define at least one, e.g. [{kind}.name] with run-config overrides")
        return []
    out = []
    for name, table in raw.items():
        if not isinstance(table, dict):
            errors.append(f"{kind}.{name}: must be a table of overrides, got {table!r}")
            continue
        overrides = {k: v for k, v in table.items() if k not in _VARIANT_KEYS}
        for key in overrides:
            if key not in SECTIONS:
                errors.append(f"{kind}.{name}.{key}: not a run-config section or a variant key{_suggest(key, [*SECTIONS, *_VARIANT_KEYS])} "
                              f"(sections: {', '.join(SECTIONS)}; variant keys: {', '.join(_VARIANT_KEYS)})")  # fmt: skip
        plan = table.get("plan")
        if plan is not None and (kind != "methods" or plan not in PLAN_MODES):
            where = "a method" if kind != "methods" else f"one of {', '.join(PLAN_MODES)}"
            errors.append(f"{kind}.{name}.plan = {plan!r}: must be {where}{_suggest(str(plan), PLAN_MODES)}")
        only = table.get("distributions")
        if only is not None and (kind != "methods" or not isinstance(only, list) or not only):
            errors.append(f"{kind}.{name}.distributions = {only!r}: a method's non-empty list of distribution names")
            only = None
        out.append(Variant(str(name), str(table.get("label", name)), overrides, plan, str(table.get("description", "")),
                           None if only is None else tuple(map(str, only))))  # fmt: skip
    return out


def _runs_under(method: Variant, dist: Variant) -> bool:
    return method.distributions is None or dist.name in method.distributions


def _select(variants: list[Variant], wanted: Any, kind: str, errors: list[str]) -> list[Variant]:
    if wanted is None:
        return variants
    names = [v.name for v in variants]
    if not isinstance(wanted, list) or not wanted:
        errors.append(f"bench.{kind} = {wanted!r}: must be a non-empty list of {kind} names")
        return variants
    for w in wanted:
        if w not in names:
            errors.append(f"bench.{kind}: {w!r} is not defined{_suggest(str(w), names)} (defined: {', '.join(names)})")
    return [next(v for v in variants if v.name == w) for w in wanted if w in names]


def _metric_errors(metrics: Sequence[Any]) -> list[str]:
    errors = []
    for m in metrics:
        split, sep, key = str(m).partition("/")
        if not sep or not key or split not in METRIC_SPLITS:
            errors.append(f"metric {m!r}: write <split>/<metric> with split one of {', '.join(METRIC_SPLITS)}, e.g. 'heldout/rougeL'")
    return errors


def _cell(method: Variant, dist: Variant, seed: int, base: dict, overrides: Sequence[str], problems: dict) -> Cell | None:
    """The cell's validated config; its config errors go to ``problems`` (error -> cells that have it)."""
    raw = deep_merge(deep_merge(base, dist.overrides, replace_strategy=True), method.overrides, replace_strategy=True)
    cell_id = f"{method.name}__{dist.name}__seed{seed}"
    raw = deep_merge(raw, {"run": {"seed": int(seed), "name": cell_id}})
    try:
        raw = apply_overrides(raw, overrides)
        return Cell(method, dist, int(seed), parse_config(raw, cell_id), raw)
    except ConfigError as err:
        for e in err.errors:
            problems.setdefault(e, []).append(f"{method.name} under {dist.name}")
        return None


def _cell_errors(problems: dict, num_cells: int) -> list[str]:
    """One line per distinct config error, naming the (method, distribution) pairs that have it."""
    out = []
    for error, where in problems.items():
        where = list(dict.fromkeys(where))
        more = f" and {len(where) - 4} more" if len(where) > 5 else ""
        cells = "every cell" if len(where) >= num_cells else "cells " + ", ".join(where[:4] if more else where) + more
        out.append(f"{cells}: {error}")
    return out


def _missing_levels(cells: Sequence[Cell]) -> list[str]:
    """One error per distribution whose drawn ranks leave out a rank level (levels are assigned by quota,
    so the counts per level do not depend on the seed; its first cell is checked).

    A bucket-effect comparison needs the largest rank in the federation: with few clients a skewed
    distribution's quota (heavy-tail-light over 8 clients: seven at the smallest level) can leave a
    level out, and then "the maximum rank" is not the one the bench declares."""
    from fedlora.config import resolved_allocation
    from fedlora.engine.plans import client_ranks

    errors, seen = [], set()
    for cell in cells:
        cfg = cell.config
        key = cell.distribution.name
        if key in seen or cfg.clients.ranks or resolved_allocation(cfg) == "fedpilot":
            continue
        seen.add(key)
        missing = sorted(set(cfg.clients.rank_levels) - set(client_ranks(cfg)))
        if missing:
            errors.append(f"distributions.{key}: {cfg.clients.rank_distribution!r} over "
                          f"{cfg.data.num_clients} clients gives no client rank {missing} of clients.rank_levels "
                          f"{list(cfg.clients.rank_levels)}; every level must take part: raise data.num_clients or drop "
                          "those levels")  # fmt: skip
    return errors


def _endpoint_rounds(claims: Sequence[ClaimSpec], cells: Sequence[Cell]) -> list[str]:
    """One error per (claim, method) whose cells do not evaluate each of the last ``last_rounds`` rounds."""
    errors = []
    for claim in claims:
        names = {claim.method, *claim.family, *claim.exploratory}
        for cell in cells:
            run = cell.config.run
            if cell.method.name not in names or cell.method.plan == "no-train" or cell.distribution.name not in claim.distributions:
                continue
            last = list(range(run.rounds - claim.last_rounds + 1, run.rounds + 1))
            if run.rounds < claim.last_rounds:
                errors.append(f"claims.{claim.name}: its endpoint averages the last {claim.last_rounds} rounds, but method "
                              f"{cell.method.name} runs run.rounds = {run.rounds}; raise run.rounds or lower last_rounds")  # fmt: skip
            elif not set(last) <= set(evaluated_rounds(run.rounds, run.eval_every, run.eval_last)):
                errors.append(f"claims.{claim.name}: its endpoint averages rounds {last}, but method {cell.method.name} does not "
                              f"evaluate all of them; set run.eval_last = {claim.last_rounds} in [base.run]")  # fmt: skip
    return list(dict.fromkeys(errors))


def _claim(raw: Any, methods: list[Variant], errors: list[str]) -> Claim | None:
    if raw is None:
        return None
    names = [m.name for m in methods]
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
        errors.append("bench.claim: must be a table with text, method and baselines")
        return None
    baselines = tuple(raw.get("baselines") or [n for n in names if n != raw["method"]])
    return Claim(str(raw.get("text", "")), raw["method"], baselines)


def parse_bench(raw: Mapping[str, Any], *, path: Path | None = None, overrides: Sequence[str] = (),
                seeds: Sequence[int] | None = None) -> Bench:  # fmt: skip
    """Validate a bench file's tables (``extends``/``base`` already resolved) into a :class:`Bench`;
    ``seeds`` replaces ``bench.seeds``."""
    errors: list[str] = []
    if seeds is not None:
        raw = deep_merge(raw, {"bench": {"seeds": list(seeds)}})
    for key in raw:
        if key not in _TOP_KEYS:
            errors.append(f"[{key}]: unknown table{_suggest(key, _TOP_KEYS)} (tables: {', '.join(_TOP_KEYS)})")
    b = dict(raw.get("bench", {}))
    path = Path(b.pop("_path")) if "_path" in b else path
    for key in b:
        if key not in _BENCH_KEYS:
            errors.append(f"bench.{key}: unknown key{_suggest(key, _BENCH_KEYS)} (keys: {', '.join(_BENCH_KEYS)})")
    name = str(b.get("name") or (path.stem if path else "bench"))
    seeds = b.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        errors.append(f"bench.seeds = {seeds!r}: must be a non-empty list of integers, e.g. [0, 1, 2]")
        seeds = [0]
    primary = str(b.get("primary_metric", "heldout/rougeL"))
    metrics = list(dict.fromkeys([primary, *b.get("metrics", [])]))
    errors.extend(_metric_errors(metrics))
    methods = _select(_variants(raw.get("methods"), "methods", errors), b.get("methods"), "methods", errors)
    dists = _select(_variants(raw.get("distributions"), "distributions", errors), b.get("distributions"), "distributions", errors)
    claim = _claim(b.get("claim"), methods, errors)
    claims = parse_claims(raw.get("claims"), [m.name for m in methods], [d.name for d in dists], seeds, errors)
    base = dict(raw.get("base", {}))
    problems: dict[str, list[str]] = {}
    names = {d.name for d in dists}
    for m in methods:
        unknown = sorted(set(m.distributions or ()) - names)
        if unknown:
            errors.append(f"methods.{m.name}.distributions: {unknown} are not distributions of this bench ({', '.join(sorted(names))})")
    cells = [_cell(m, d, s, base, overrides, problems) for d in dists for m in methods if _runs_under(m, d) for s in seeds[:1]]
    errors.extend(_cell_errors(problems, len(cells)))
    if not errors:
        cells = [_cell(m, d, s, base, overrides, problems) for d in dists for m in methods if _runs_under(m, d) for s in seeds]
        errors.extend(_missing_levels([c for c in cells if c is not None]))
        errors.extend(_endpoint_rounds(claims, [c for c in cells if c is not None]))
    if errors:
        raise BenchError(errors, str(path) if path else "bench file")
    quick = (path.parent / str(b["quick"])) if b.get("quick") and path else (path.with_name(f"{path.stem}_quick.toml") if path else None)
    return Bench(name, path, str(b.get("description", "")), tuple(seeds), tuple(metrics), primary, tuple(methods),
                 tuple(dists), tuple(c for c in cells if c is not None), claim, quick, claims, base, tuple(overrides))  # fmt: skip


def load_bench(path: str | Path, *, quick: bool = False, overrides: Sequence[str] = (), seeds: Sequence[int] | None = None) -> Bench:
    """Read and validate a bench file; ``quick=True`` reads its quick variant instead; ``seeds`` replaces ``bench.seeds``.

    Raises:
        BenchError: every problem of the file and of every cell's run config, one per line.
    """
    path = Path(path)
    errors: list[str] = []
    raw = _read_bench_raw(path, errors)
    if errors:
        raise BenchError(errors, str(path))
    if quick:
        b = raw.get("bench", {})
        target = path.parent / str(b["quick"]) if b.get("quick") else path.with_name(f"{path.stem}_quick.toml")
        if not target.is_file():
            raise BenchError([f"--quick: {target} does not exist; write a quick bench file there (`extends = "
                              f"\"{path.name}\"` plus smaller settings) or set bench.quick"], str(path))  # fmt: skip
        return load_bench(target, overrides=overrides, seeds=seeds)
    return parse_bench(raw, path=path, overrides=overrides, seeds=seeds)

"""Pre-registered claims of a bench and their sequential, family-wise verdicts.

A bench file declares its claims before any cell runs (``[claims.<name>]``)::

    [claims.bucket-effect]
    text = "FlexLoRA beats FedIT at the minimum rank and HetLoRA on unseen tasks."
    method = "flexlora"
    family = ["fedit-min", "hetlora"]            # the primary comparisons ...
    distributions = ["uniform", "heavy-tail-light"]  # ... under each of these: 4 comparisons
    endpoint = "heldout/rougeL"                  # one primary endpoint: <split>/<metric> ...
    last_rounds = 2                              # ... averaged over the last k evaluated rounds
    delta = 0.02                                 # equivalence margin
    alpha = 0.05                                 # family-wise error rate over all looks
    looks = [5, 10, 15, 20]                      # seeds analysed at each look; the last is the cap
    spending = "pocock"                          # how alpha is spent over the looks
    exploratory = ["flora", "no-train"]          # compared too, never part of the family

**The analysis.** A comparison is the method minus one baseline under one distribution, on the
endpoint, paired by seed (sign flipped for a loss, so > 0 means the method is better). The family
holds ``len(family) x len(distributions)`` comparisons, each with two hypotheses: "no difference"
(two-sided paired t-test) and "not equivalent within ±delta" (TOST). Look k happens once every
comparison of the family has paired cells for the first ``looks[k]`` seeds of ``bench.seeds``; it
spends ``a_k = A(n_k / n_K) - A(n_{k-1} / n_K)`` of the error, ``A`` the Lan-DeMets (1983) spending
function, and applies Holm (1979) to all ``2m`` hypotheses at level ``a_k``. The looks' levels add up
to ``alpha``, so by the union bound the probability of any false verdict over the whole sequence is at
most ``alpha`` however the looks correlate (a conservative group-sequential design, Jennison &
Turnbull 2000, ch. 7). A comparison decided at a look keeps its verdict: **better** / **worse**
(difference rejected), **equivalent within delta** (equivalence rejected; also when both are), or
**no difference detected** while neither is. A claim is **decided** when every comparison of its
family is; **cap reached** when the last look found some undecided; otherwise it **continues** to
the next look. Displayed intervals of primary comparisons are Bonferroni intervals at level
``1 - a_k / m`` (simultaneous over the family at that look); exploratory ones are plain 95% intervals.

**The pre-registration.** :func:`preregistration` is the declared design (claims, methods,
distributions, base config, seeds) with its hash; :func:`check_or_write_preregistration` writes it
into the results folder once and refuses a changed design after a cell is finished there: a new
design is a new experiment (a new bench name).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedlora.bench.baselines import REFERENCE_PLANS
from fedlora.bench.results import lower_is_better

__all__ = ["ClaimSpec", "ComparisonResult", "ClaimStatus", "CLAIM_KEYS", "parse_claims", "analyse_claim",
           "preregistration", "check_or_write_preregistration", "PreregistrationError", "PREREGISTRATION_FILE",
           "VERDICTS"]  # fmt: skip

PREREGISTRATION_FILE = "preregistration.json"
VERDICTS = ("better", "worse", "equivalent within δ", "no difference detected")
CLAIM_KEYS = ("text", "method", "family", "distributions", "endpoint", "last_rounds", "delta", "alpha", "looks", "spending",
              "exploratory")  # fmt: skip


class PreregistrationError(RuntimeError):
    """The bench's design differs from the one pre-registered in a results folder that holds finished cells."""


@dataclass(frozen=True)
class ClaimSpec:
    """One pre-registered claim: ``method`` against each of ``family`` under each of ``distributions``."""

    name: str
    text: str
    method: str
    family: tuple[str, ...]
    distributions: tuple[str, ...]
    endpoint: str
    last_rounds: int = 1
    delta: float = 0.02
    alpha: float = 0.05
    looks: tuple[int, ...] = (5,)
    spending: str = "pocock"
    exploratory: tuple[str, ...] = ()

    @property
    def cap(self) -> int:
        return self.looks[-1]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _names(value: Any, where: str, known: Sequence[str], kind: str, errors: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{where} = {value!r}: a list of {kind} names")
        return ()
    for v in value:
        if v not in known:
            errors.append(f"{where}: {v!r} is not a {kind} of this bench{_suggest(v, known)} ({', '.join(known)})")
    return tuple(value)


def _claim(name: str, table: Any, methods: Sequence[str], dists: Sequence[str], errors: list[str]) -> ClaimSpec | None:
    where = f"claims.{name}"
    if not isinstance(table, dict):
        errors.append(f"{where}: must be a table with method, family, endpoint, ...")
        return None
    for key in table:
        if key not in CLAIM_KEYS:
            errors.append(f"{where}.{key}: unknown key{_suggest(key, CLAIM_KEYS)} (keys: {', '.join(CLAIM_KEYS)})")
    method = table.get("method")
    if method not in methods:
        errors.append(f"{where}.method = {method!r}: must be a method of this bench{_suggest(str(method), methods)}")
    family = _names(table.get("family"), f"{where}.family", methods, "method", errors)
    if not family:
        errors.append(f"{where}.family: declare at least one baseline (the primary comparisons)")
    distributions = _names(table.get("distributions", list(dists)), f"{where}.distributions", dists, "distribution", errors)
    exploratory = _names(table.get("exploratory", []), f"{where}.exploratory", methods, "method", errors)
    endpoint = str(table.get("endpoint", ""))
    split, sep, key = endpoint.partition("/")
    if not sep or not key or split not in ("eval", "heldout"):
        errors.append(f"{where}.endpoint = {endpoint!r}: write <split>/<metric> with split eval or heldout, e.g. 'heldout/rougeL'")
    looks = table.get("looks", [5])
    if (not isinstance(looks, list) or not looks or not all(isinstance(n, int) and not isinstance(n, bool) for n in looks)
            or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:]))):  # fmt: skip
        errors.append(f"{where}.looks = {looks!r}: increasing seed counts, the first at least 2 (e.g. [5, 10, 15, 20])")
        looks = [5]
    numbers = {"last_rounds": (1, int), "delta": (0.02, float), "alpha": (0.05, float)}
    values = {}
    for key, (default, kind) in numbers.items():
        value = table.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or (key == "alpha" and value >= 0.5) \
                or (kind is int and value != int(value)):  # fmt: skip
            errors.append(f"{where}.{key} = {value!r}: must be a positive {'integer' if kind is int else 'number'}"
                          + (" below 0.5" if key == "alpha" else ""))  # fmt: skip
            value = default
        values[key] = kind(value)
    spending = str(table.get("spending", "pocock"))
    from fedlora.eval.stats import SPENDING_FUNCTIONS

    if spending not in SPENDING_FUNCTIONS:
        errors.append(f"{where}.spending = {spending!r}: one of {', '.join(SPENDING_FUNCTIONS)}{_suggest(spending, list(SPENDING_FUNCTIONS))}")
    overlap = sorted(set(family) & set(exploratory))
    if overlap:
        errors.append(f"{where}: {overlap} are in both family and exploratory; a comparison is primary or exploratory, not both")
    return ClaimSpec(name, str(table.get("text", "")), str(method), family, distributions, endpoint, values["last_rounds"],
                     values["delta"], values["alpha"], tuple(looks), spending, exploratory)  # fmt: skip


def parse_claims(raw: Any, methods: Sequence[str], dists: Sequence[str], seeds: Sequence[int], errors: list[str]) -> tuple[ClaimSpec, ...]:
    """The ``[claims]`` tables, validated against the bench's methods, distributions and seeds (errors appended)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errors.append("[claims]: a table of named claims, e.g. [claims.bucket-effect]")
        return ()
    out = []
    for name, table in raw.items():
        claim = _claim(str(name), table, methods, dists, errors)
        if claim is None:
            continue
        if claim.cap > len(seeds):
            errors.append(f"claims.{name}.looks: the cap {claim.cap} exceeds the {len(seeds)} seeds of bench.seeds; "
                          f"list at least {claim.cap} seeds")  # fmt: skip
        out.append(claim)
    return tuple(out)


def evaluated_rounds(rounds: int, eval_every: int, eval_last: int) -> list[int]:
    """Rounds after which the engine evaluates (``fedlora.engine.run``): the last, every ``eval_every``-th, the last ``eval_last``."""
    return [r for r in range(1, rounds + 1) if r == rounds or (eval_every > 0 and r % eval_every == 0) or r > rounds - eval_last]


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class ComparisonResult:
    """One comparison of a claim at the look that decided it (or the latest look while undecided)."""

    claim: str
    baseline: str
    distribution: str
    endpoint: str
    exploratory: bool
    seeds: int
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_difference: float
    p_equivalence: float
    adjusted_p_difference: float | None
    adjusted_p_equivalence: float | None
    alpha_look: float | None
    look: int | None
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClaimStatus:
    """Where a claim stands: ``decided`` | ``continue`` | ``cap reached`` | ``waiting`` (no look yet)."""

    claim: str
    status: str
    looks_done: tuple[int, ...]
    next_look: int | None
    comparisons: tuple[ComparisonResult, ...]
    exploratory: tuple[ComparisonResult, ...]
    half_width: float | None  # the widest displayed half-width among the primary comparisons

    def line(self) -> str:
        """One line for a terminal."""
        done = f"{self.looks_done[-1]} seeds analysed" if self.looks_done else "no look yet"
        verdicts = ", ".join(f"{c.baseline}@{c.distribution}: {c.verdict}" for c in self.comparisons)
        nxt = f"; next look at {self.next_look} seeds" if self.next_look else ""
        return f"claim {self.claim}: {self.status.upper()} ({done}{nxt}){' - ' + verdicts if verdicts else ''}"

    def to_dict(self) -> dict:
        return {"claim": self.claim, "status": self.status, "looks_done": list(self.looks_done), "next_look": self.next_look,
                "half_width": self.half_width}  # fmt: skip


def _endpoint_values(rows: Sequence[Any], claim: ClaimSpec) -> dict[tuple[str, str, int], float]:
    from fedlora.bench.results import endpoint_value

    out = {}
    for r in rows:
        v = endpoint_value(r.records, claim.endpoint, claim.last_rounds)
        if v is not None:
            out[(r.method, r.distribution, r.seed)] = v
    return out


def _pairs(values: Mapping, rows: Sequence[Any], method: str, base: str, dist: str, seeds: Sequence[int]) -> list[tuple[int, float, float]]:
    """``(seed, method value, baseline value)`` in ``seeds`` order where both exist (references pair across distributions)."""
    base_dists = {r.distribution for r in rows if r.method == base}
    shared = len(base_dists) == 1 and any(r.plan in REFERENCE_PLANS for r in rows if r.method == base)
    base_dist = next(iter(base_dists)) if shared else dist
    out = []
    for s in seeds:
        a, b = values.get((method, dist, s)), values.get((base, base_dist, s))
        if a is not None and b is not None:
            out.append((s, a, b))
    return out


def _tests(diffs: Sequence[float], delta: float, confidence: float) -> tuple[float, float, float, float, float]:
    from fedlora.eval.stats import mean_se, paired_t_pvalue, t_quantile, tost_pvalue

    mean, se = mean_se(diffs)
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * se
    return mean, mean - half, mean + half, paired_t_pvalue(diffs), tost_pvalue(diffs, delta)


def _verdict(diff: float, difference: bool, equivalence: bool) -> str:
    if equivalence:
        return "equivalent within δ"
    if difference:
        return "better" if diff > 0 else "worse"
    return "no difference detected"


def analyse_claim(claim: ClaimSpec, rows: Sequence[Any], seeds: Sequence[int]) -> ClaimStatus:
    """The claim's status from the finished cells ``rows`` (:class:`fedlora.bench.results.CellRow`),
    seeds taken in the declared order ``seeds`` (module docstring: the looks, Holm, the verdicts)."""
    from fedlora.eval.stats import alpha_spent, holm

    sign = -1.0 if lower_is_better(claim.endpoint) else 1.0
    values = _endpoint_values(rows, claim)
    keys = [(b, d) for d in claim.distributions for b in claim.family]
    pairs = {k: _pairs(values, rows, claim.method, k[0], k[1], seeds) for k in keys}
    decided: dict[tuple[str, str], ComparisonResult] = {}
    latest: dict[tuple[str, str], ComparisonResult] = {}
    done: list[int] = []
    m, previous = len(keys), 0.0
    for n in claim.looks:
        wanted = list(seeds[:n])
        if len(wanted) < n or not all([s for s, _, _ in pairs[k][:n]] == wanted for k in keys):
            break
        spent = alpha_spent(claim.spending, n / claim.cap, claim.alpha)
        level, previous = spent - previous, spent
        stats = {k: _tests([sign * (a - b) for _, a, b in pairs[k][:n]], claim.delta, 1 - level / m) for k in keys}
        adjusted = holm([stats[k][3] for k in keys] + [stats[k][4] for k in keys])
        for i, k in enumerate(keys):
            diff, low, high, p_diff, p_eq = stats[k]
            adj_diff, adj_eq = adjusted[i], adjusted[m + i]
            verdict = _verdict(diff, adj_diff <= level, adj_eq <= level)
            result = ComparisonResult(claim.name, k[0], k[1], claim.endpoint, False, n, diff, low, high, 1 - level / m,
                                      p_diff, p_eq, adj_diff, adj_eq, level, n, verdict)  # fmt: skip
            latest[k] = result
            if k not in decided and verdict != "no difference detected":
                decided[k] = result
        done.append(n)
        if len(decided) == m:  # the claim stops here: later seeds are never looked at
            break
    primary = tuple(decided.get(k) or latest[k] for k in keys if k in latest)
    if not done:
        status = "waiting"
    elif len(decided) == m:
        status = "decided"
    else:
        status = "cap reached" if done[-1] == claim.cap else "continue"
    nxt = None if status in ("decided", "cap reached") else next(n for n in claim.looks if n not in done)
    half = max(((c.ci_high - c.ci_low) / 2 for c in primary), default=None)
    return ClaimStatus(claim.name, status, tuple(done), nxt, primary, _exploratory(claim, rows, values, seeds, sign), half)


def _exploratory(claim: ClaimSpec, rows: Sequence[Any], values: Mapping, seeds: Sequence[int], sign: float) -> tuple[ComparisonResult, ...]:
    """Every exploratory baseline under every claim distribution: all paired seeds, a plain 95% interval, no adjustment."""
    out = []
    for dist in claim.distributions:
        for base in claim.exploratory:
            p = _pairs(values, rows, claim.method, base, dist, seeds)
            if len(p) < 2:
                continue
            diff, low, high, p_diff, p_eq = _tests([sign * (a - b) for _, a, b in p], claim.delta, 0.95)
            verdict = _verdict(diff, p_diff <= 0.05, p_eq <= 0.05)
            out.append(ComparisonResult(claim.name, base, dist, claim.endpoint, True, len(p), diff, low, high, 0.95, p_diff, p_eq,
                                        None, None, None, None, verdict))  # fmt: skip
    return tuple(out)


# ----------------------------------------------------------------------------- pre-registration


def _design(bench: Any) -> dict:
    """What the pre-registration fixes: claims, methods, distributions, base config, seeds, run-wide overrides."""
    variants = lambda vs: [{"name": v.name, "label": v.label, "plan": v.plan, "overrides": v.overrides,  # noqa: E731
                            "distributions": list(v.distributions) if v.distributions else None} for v in vs]
    return {"claims": [c.to_dict() for c in bench.claims], "methods": variants(bench.methods),
            "distributions": variants(bench.distributions), "base": bench.base, "seeds": list(bench.seeds),
            "overrides": [o for o in bench.overrides if not o.startswith(UNFIXED_OVERRIDES)]}  # fmt: skip


UNFIXED_OVERRIDES = ("run.threads=", "data.train_path=", "run.out_dir=", "model.device=")
"""``--set`` overrides that say where or how fast a cell runs, not what it measures: not part of the design."""


def preregistration(bench: Any, git_commit: str) -> dict:
    """The pre-registration record of ``bench``: its design, the design's SHA-256, the commit and the time."""
    design = _design(bench)
    digest = hashlib.sha256(json.dumps(design, sort_keys=True, default=str).encode()).hexdigest()
    return {"bench": bench.name, "bench_file": str(bench.path) if bench.path else None, "design_sha256": digest,
            "git_commit": git_commit, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "analysis": __doc__.split("**The analysis.**")[1].split("**The pre-registration.**")[0].strip(),
            "design": design}  # fmt: skip


def check_or_write_preregistration(bench: Any, folder: str | Path, git_commit: str, finished_cells: int) -> Path:
    """Write ``folder/preregistration.json`` unless it holds this design already.

    Raises:
        PreregistrationError: the folder pre-registered another design and holds ``finished_cells`` > 0.
    """
    path = Path(folder) / PREREGISTRATION_FILE
    record = preregistration(bench, git_commit)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("design_sha256") == record["design_sha256"]:
            return path
        if finished_cells:
            raise PreregistrationError(
                f"{path}: this bench's design (claims, methods, distributions, base config or seeds) differs from the one "
                f"pre-registered there at commit {old.get('git_commit', '?')}, and {finished_cells} cells have finished under it. "
                "A changed design is a new experiment: give the bench a new name (bench.name) and results folder")
    if finished_cells:
        record["note"] = f"written after {finished_cells} cells had finished: not a pre-registration of those cells"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path

"""``docs/results.md`` from bench output folders: tables, plots, command, commit and the claim check.

The claim check compares a bench's ``[bench.claim] method`` with each baseline on the primary
metric, per resource distribution, paired by seed (a seed fixes the data split, the partition and
the evaluation examples, so the paired difference removes most of the seed-to-seed spread): the
mean paired difference with its 95% Student-t interval, the relative change, and a verdict:
*better* / *worse* when the interval excludes zero, *no difference detected* otherwise, and *one
seed* when there is no estimate of the noise. ``comparisons.json`` holds every comparison, with
``seeds_for_2pt``: the paired seeds a 95% interval of half-width 0.02 (two points of accuracy or
Rouge-L) would need at the spread of differences measured so far (:func:`fedlora.eval.stats.seeds_for_half_width`).
"""

from __future__ import annotations

import json
import math
import statistics
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fedlora.bench.plots import plot_bench
from fedlora.bench.baselines import REFERENCE_PLANS
from fedlora.bench.design import ClaimSpec, ClaimStatus, ComparisonResult, analyse_claim
from fedlora.bench.results import CellRow, aggregate, collect, lower_is_better, markdown_tables

__all__ = ["Comparison", "lower_is_better", "eval_size", "compare", "comparisons_json", "claim_section", "bench_section",
           "claim_specs", "claim_statuses", "preregistered_section", "claim_sentence", "claim_sentences",
           "write_results_doc"]


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``baseline`` on one distribution: ``diff`` > 0 means ``method`` is better
    (for a loss, lower), ``relative`` is ``diff`` over the baseline's value; ``ci_low``/``ci_high`` the
    95% Student-t interval of the mean paired difference (None with one seed)."""

    distribution: str
    baseline: str
    diff: float
    relative: float | None
    stderr: float | None
    verdict: str  # better | worse | equivalent within δ | no difference detected | one seed
    seeds: int = 1
    ci_low: float | None = None
    ci_high: float | None = None
    n_eval: int | None = None
    seeds_for_2pt: int | None = None  # paired seeds for a 95% half-width of TARGET_HALF_WIDTH at this spread


TARGET_HALF_WIDTH = 0.02
"""The interval half-width the evidence benches aim for: two points of accuracy or Rouge-L."""


def eval_size(row: CellRow, metric: str) -> int | None:
    """Examples behind ``metric`` in the cell's last evaluation of its split (``n_cls`` for accuracy,
    ``n_gen`` for Rouge-L, else ``n_examples``); a task metric counts that task's examples."""
    split, _, key = metric.partition("/")
    evals = [r for r in row.records if r.get("type") == "eval" and r.get("split") == split and r.get(key) is not None]
    if not evals:
        return None
    last, prefix = evals[-1], key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    leaf = key.rsplit("/", 1)[-1]
    count = "n_cls" if leaf.startswith("accuracy") else "n_gen" if leaf.startswith("rougeL") else "n_examples"
    value = last.get(prefix + count, last.get(prefix + "n_examples"))
    return None if value is None else int(value)


def compare(rows: Sequence[CellRow], method: str, baselines: Sequence[str], metric: str) -> list[Comparison]:
    """``method`` against each baseline per distribution, paired by seed (same data split, same evaluation
    examples): the mean paired difference, signed so that > 0 means ``method`` is better, with a 95%
    Student-t interval and a verdict (:func:`fedlora.eval.stats.paired_comparison`)."""
    from fedlora.eval.stats import paired_comparison, seeds_for_half_width, tost_pvalue

    sign = -1.0 if lower_is_better(metric) else 1.0
    by_key = {(r.method, r.distribution, r.seed): r for r in rows}
    dists_of: dict[str, set[str]] = {}
    for r in rows:
        dists_of.setdefault(r.method, set()).add(r.distribution)

    references = {r.method for r in rows if r.plan in REFERENCE_PLANS}

    def baseline_row(base: str, dist: str, seed: int) -> CellRow | None:
        """The baseline's cell of this distribution; a reference that does not depend on the distribution
        (the untrained model, the pooled data) pairs from its only one. Every other baseline (local-only
        training, whose ranks are the distribution's) pairs only with its own distribution's cells."""
        only = dists_of.get(base, set())
        shared = base in references and len(only) == 1
        return by_key.get((base, dist, seed)) or (by_key.get((base, next(iter(only)), seed)) if shared else None)

    out = []
    for dist in dict.fromkeys(r.distribution for r in rows if r.method == method):
        for base in baselines:
            pairs = [(r, baseline_row(base, dist, r.seed)) for r in rows if r.method == method and r.distribution == dist]
            pairs = [(a, b) for a, b in pairs if b is not None and a.final.get(metric) is not None and b.final.get(metric) is not None]
            if not pairs:
                continue
            diffs = [sign * (a.final[metric] - b.final[metric]) for a, b in pairs]
            base_mean = statistics.fmean(b.final[metric] for _, b in pairs)
            diff = statistics.fmean(diffs)
            rel = diff / abs(base_mean) if base_mean else None
            sizes = [n for a, b in pairs for n in (eval_size(a, metric), eval_size(b, metric)) if n is not None]
            n_eval = min(sizes) if sizes else None
            if len(diffs) < 2:
                out.append(Comparison(dist, base, diff, rel, None, "one seed", 1, n_eval=n_eval))
                continue
            pc = paired_comparison(diffs, [0.0] * len(diffs))
            needed = seeds_for_half_width(pc.se * math.sqrt(pc.n), TARGET_HALF_WIDTH)
            verdict = pc.verdict
            if not lower_is_better(metric) and tost_pvalue(diffs, TARGET_HALF_WIDTH) <= 0.05:
                verdict = "equivalent within δ"  # the 90% interval lies inside ±0.02 (TOST at 5%)
            out.append(Comparison(dist, base, diff, rel, pc.se, verdict, pc.n, pc.ci_low, pc.ci_high, n_eval, needed))
    return out


def claim_specs(info: dict) -> list[ClaimSpec]:
    """The pre-registered claims recorded in a ``bench.json``."""
    return [ClaimSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in info.get("claims") or []]


def claim_statuses(info: dict, rows: Sequence[CellRow]) -> list[ClaimStatus]:
    """Each pre-registered claim's sequential verdicts (:func:`fedlora.bench.design.analyse_claim`)."""
    return [analyse_claim(c, rows, info["seeds"]) for c in claim_specs(info)]


def claim_sentence(spec: ClaimSpec, status: ClaimStatus, labels: dict[str, str] | None = None) -> str:
    """One sentence of a pre-registered claim's verdict with its intervals (README, docs), from its analysis."""
    labels = labels or {}
    name = labels.get(spec.method, spec.method)
    head = {"decided": "decided", "cap reached": f"cap reached at {spec.cap} seeds, undecided",
            "continue": f"{status.looks_done[-1] if status.looks_done else 0} seeds analysed, continuing to {status.next_look}",
            "waiting": f"waiting for the first look at {spec.looks[0]} seeds"}[status.status]  # fmt: skip
    parts = [f"{name} − {labels.get(c.baseline, c.baseline)} ({c.distribution}) {c.diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], "
             f"{c.verdict}" for c in status.comparisons]  # fmt: skip
    family = ", ".join(labels.get(b, b) for b in spec.family)
    body = "; ".join(parts) if parts else f"{name} against {family} under {', '.join(spec.distributions)}, no look yet"
    rounds = "the last round" if spec.last_rounds == 1 else f"mean of the last {spec.last_rounds} rounds"
    return f"Claim `{spec.name}` ({spec.endpoint}, {rounds}, δ = {spec.delta:g}; {head}): {body}."


def _adjusted_p(c: ComparisonResult) -> float | None:
    """The adjusted p-value behind the verdict: of the difference (better/worse), of equivalence, else the smaller."""
    if c.adjusted_p_difference is None:
        return None
    if c.verdict in ("better", "worse"):
        return c.adjusted_p_difference
    if c.verdict == "equivalent within δ":
        return c.adjusted_p_equivalence
    return min(c.adjusted_p_difference, c.adjusted_p_equivalence)


def claim_sentences(folder: str | Path) -> list[str]:
    """:func:`claim_sentence` of every pre-registered claim of the bench published in ``folder``."""
    info = json.loads((Path(folder) / "bench.json").read_text(encoding="utf-8"))
    labels = {m["name"]: m["label"] for m in info["methods"]}
    rows = collect(folder, info["cells"])
    return [claim_sentence(c, st, labels) for c, st in zip(claim_specs(info), claim_statuses(info, rows))]


def _claim_rows(info: dict, rows: Sequence[CellRow]) -> list[dict]:
    out = []
    for spec, status in zip(claim_specs(info), claim_statuses(info, rows)):
        for c in (*status.comparisons, *status.exploratory):
            out.append({"claim": spec.text, "family": None if c.exploratory else spec.name, "exploratory": c.exploratory,
                        "method": spec.method, "baseline": c.baseline, "distribution": c.distribution, "metric": spec.endpoint,
                        "last_rounds": spec.last_rounds, "seeds": c.seeds, "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high,
                        "confidence": c.confidence, "p_difference": c.p_difference, "p_equivalence": c.p_equivalence,
                        "adjusted_p": _adjusted_p(c), "adjusted_p_difference": c.adjusted_p_difference,
                        "adjusted_p_equivalence": c.adjusted_p_equivalence, "alpha_look": c.alpha_look, "look": c.look,
                        "delta": spec.delta, "verdict": c.verdict, "primary": not c.exploratory, "claim_status": status.status,
                        "lower_is_better": lower_is_better(spec.endpoint)})  # fmt: skip
    return out


def comparisons_json(info: dict, rows: Sequence[CellRow]) -> list[dict]:
    """Every comparison of the bench, as the objects of ``comparisons.json``: the pre-registered claims'
    primary families (``family`` set, Holm-adjusted ``adjusted_p``) and their exploratory comparisons, then
    the ``[bench.claim]`` comparisons (method vs each baseline, per distribution, on the primary metric and
    every other non-training metric), which are all exploratory: declared without a family, unadjusted."""
    out = _claim_rows(info, rows)
    claim = info.get("claim")
    if not claim:
        return out
    metrics = [info["primary_metric"]] + [m for m in info["metrics"] if m != info["primary_metric"] and not m.startswith("train/")]
    for metric in metrics:
        for c in compare(rows, claim["method"], claim["baselines"], metric):
            out.append({"claim": claim["text"], "method": claim["method"], "baseline": c.baseline, "distribution": c.distribution,
                        "metric": metric, "seeds": c.seeds, "n_eval": c.n_eval, "diff": c.diff, "ci_low": c.ci_low,
                        "ci_high": c.ci_high, "verdict": c.verdict, "seeds_for_2pt": c.seeds_for_2pt,
                        "primary": metric == info["primary_metric"], "family": None, "exploratory": True, "adjusted_p": None,
                        "lower_is_better": lower_is_better(metric)})  # fmt: skip
    return out


def claim_section(info: dict, rows: Sequence[CellRow], labels: dict[str, str]) -> str:
    claim, metric = info.get("claim"), info["primary_metric"]
    if not claim:
        return ""
    comps = compare(rows, claim["method"], claim["baselines"], metric)
    name = labels.get(claim["method"], claim["method"])
    better = "lower is better" if lower_is_better(metric) else "higher is better"
    lines = [f"**Claim (exploratory).** {claim['text']}", "",
             "*Exploratory*: these comparisons were not pre-registered as a family with a stopping rule, so their "
             "unadjusted 95% intervals control no family-wise error; read them as leads, not verdicts.", "",
             f"**{name} against each baseline** on `{metric}` ({better}; a positive "
             "difference means the claimed method is better; mean of the differences paired by seed):", "",
             "| distribution | baseline | seeds | eval examples | difference | relative | 95% CI | verdict | seeds for ±0.02 |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in comps:
        rel = "-" if c.relative is None else f"{100 * c.relative:+.1f}%"
        ci = "-" if c.ci_low is None else f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
        need = "-" if c.ci_low is None else (str(c.seeds_for_2pt) if c.seeds_for_2pt else "> 100000")
        lines.append(f"| {c.distribution} | {labels.get(c.baseline, c.baseline)} | {c.seeds} | {c.n_eval or '-'} | {c.diff:+.4f} | {rel} | "
                     f"{ci} | {c.verdict} | {need} |")
    counts = {v: sum(c.verdict == v for c in comps) for v in ("better", "no difference detected", "worse", "one seed", "equivalent within δ")}
    lines += ["", "**Reading.** " + _verdict_text(name, counts, comps), ""]
    if any(c.ci_low is not None for c in comps):
        lines += ["*Seeds for ±0.02*: the paired seeds a 95% interval of half-width 0.02 would need at the spread of the "
                  "paired differences measured so far (a planning figure; the spread itself is estimated from these seeds).", ""]
    lines += _other_metrics(info, rows, name)
    return "\n".join(lines)


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def preregistered_section(info: dict, rows: Sequence[CellRow], labels: dict[str, str], plot_dir: Path,
                          rel: Any = str) -> str:  # fmt: skip
    """Markdown of each pre-registered claim: status, the primary family's verdicts (Holm, sequential), the
    exploratory comparisons, and a forest plot written to ``plot_dir`` (linked through ``rel``)."""
    from fedlora.bench.plots import plot_forest

    parts = []
    for spec, st in zip(claim_specs(info), claim_statuses(info, rows)):
        name = labels.get(spec.method, spec.method)
        rounds = "the last round" if spec.last_rounds == 1 else f"the mean of the last {spec.last_rounds} rounds"
        looks = ", ".join(map(str, spec.looks))
        status = {"decided": "**decided**: every primary comparison has a verdict",
                  "cap reached": f"**cap reached** ({spec.cap} seeds) with comparisons undecided; widest adjusted half-width "
                                 f"{st.half_width:.4f}" if st.half_width is not None else "**cap reached**",
                  "continue": f"**continue**: {st.looks_done[-1] if st.looks_done else 0} seeds analysed, next look at {st.next_look} seeds",
                  "waiting": f"**waiting** for the first look ({spec.looks[0]} paired seeds of every primary comparison)"}[st.status]  # fmt: skip
        lines = [f"### Claim `{spec.name}` (pre-registered)", "", spec.text, "",
                 f"- Primary endpoint: `{spec.endpoint}`, {rounds}; {name} against {', '.join(labels.get(b, b) for b in spec.family)} "
                 f"under {', '.join(spec.distributions)} ({len(spec.family) * len(spec.distributions)} comparisons, one family).",
                 f"- Error control: family-wise α = {spec.alpha} over all looks (looks at {looks} seeds, {spec.spending} alpha "
                 f"spending, Holm at each look over the difference and equivalence tests); equivalence margin δ = {spec.delta}.",
                 f"- Status: {status}.", ""]  # fmt: skip
        if st.comparisons or st.exploratory:
            lines += ["| comparison | family | seeds | difference | interval | adjusted p | verdict |", "|---|---|---|---|---|---|---|"]
            for c in (*st.comparisons, *st.exploratory):
                kind = "exploratory" if c.exploratory else spec.name
                ci = f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] ({100 * c.confidence:.2f}%)"
                lines.append(f"| {labels.get(c.baseline, c.baseline)} @ {c.distribution} | {kind} | {c.seeds} | {c.diff:+.4f} | {ci} | "
                             f"{_fmt_p(_adjusted_p(c)) if not c.exploratory else 'unadjusted ' + _fmt_p(min(c.p_difference, c.p_equivalence))} | "
                             f"{c.verdict} |")  # fmt: skip
            lines += ["", "A positive difference means the claimed method is better. Primary intervals are Bonferroni intervals "
                      "at the look's level (simultaneous over the family); exploratory ones are plain 95% intervals and decide nothing.", ""]
            path = plot_forest([*st.comparisons, *st.exploratory], spec.delta, f"claim {spec.name}: {spec.endpoint}, {rounds}",
                               labels, plot_dir / f"forest_{spec.name}.png")  # fmt: skip
            lines += [f"![forest_{spec.name}]({rel(path)})", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _other_metrics(info: dict, rows: Sequence[CellRow], name: str) -> list[str]:
    """One bullet per secondary metric (training loss left out): how often the claimed method is better."""
    claim, lines = info["claim"], []
    for m in (m for m in info["metrics"] if m != info["primary_metric"] and not m.startswith("train/")):
        cs = compare(rows, claim["method"], claim["baselines"], m)
        if not cs:
            continue
        text = f"- On `{m}` {name} is better in {sum(c.diff > 0 for c in cs)} of {len(cs)} comparisons"
        if cs[0].stderr is not None:
            text += (f"; its 95% interval excludes zero in {sum(c.verdict == 'better' for c in cs)} (better) and "
                     f"{sum(c.verdict == 'worse' for c in cs)} (worse)")
        excluded = [f"{c.baseline} @ {c.distribution} {c.verdict} {c.diff:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
                    for c in cs if c.verdict in ("better", "worse")]  # fmt: skip
        lines.append(text + (": " + "; ".join(excluded) if excluded else "") + ".")
    return lines + _holm_line(info, rows)


def legacy_pvalues(info: dict, rows: Sequence[CellRow]) -> list[tuple[str, Comparison, float]]:
    """``(metric, comparison, two-sided paired-t p-value)`` of every ``[bench.claim]`` comparison with 2+ seeds."""
    from fedlora.eval.stats import paired_t_pvalue

    claim, out = info["claim"], []
    for m in (m for m in info["metrics"] if not m.startswith("train/")):
        for c in compare(rows, claim["method"], claim["baselines"], m):
            if c.stderr is not None:
                out.append((m, c, _p_from(c)))
    return out


def _p_from(c: Comparison) -> float:
    """Two-sided paired-t p-value from a comparison's mean, standard error and seeds."""
    from scipy.stats import t

    if not c.stderr:
        return 1.0 if c.diff == 0 else 0.0
    return float(min(1.0, 2 * t.sf(abs(c.diff) / c.stderr, c.seeds - 1)))


def _holm_line(info: dict, rows: Sequence[CellRow]) -> list[str]:
    """How many of the exploratory comparisons survive Holm over all of them (family-wise 5%)."""
    from fedlora.eval.stats import holm

    tested = legacy_pvalues(info, rows)
    if not tested:
        return []
    adjusted = holm([p for _, _, p in tested])
    kept = [f"`{m}` {c.baseline} @ {c.distribution} ({c.verdict})" for (m, c, _), a in zip(tested, adjusted) if a <= 0.05]
    return [f"- Holm over all {len(tested)} comparisons above (family-wise 5%): {len(kept)} survive"
            + (": " + "; ".join(kept) if kept else "") + "."]


def _verdict_text(name: str, counts: dict[str, int], comps: Sequence[Comparison]) -> str:
    if not comps:
        return "No cell of the claimed method and its baselines finished, so the claim is not tested."
    ahead = sum(c.diff > 0 for c in comps)
    rel = [c.relative for c in comps if c.relative is not None]
    spread = f" (relative differences from {100 * min(rel):+.1f}% to {100 * max(rel):+.1f}%)" if rel else ""
    head = f"{name} is ahead in {ahead} of {len(comps)} comparisons{spread}. "
    if counts["one seed"]:
        return head + ("With one seed per cell there is no estimate of run-to-run noise, so none of these differences is "
                       "significant and the run neither confirms nor refutes the claim; run every seed of the bench for that.")  # fmt: skip
    if counts["better"] == len(comps):
        return head + "Every 95% interval lies above zero: the results agree with the claim."
    if counts["worse"]:
        return head + (f"{counts['worse']} comparison(s) are worse (95% interval below zero): the results "
                       "disagree with the claim there.")  # fmt: skip
    if not counts["better"]:
        return head + ("Every 95% interval contains zero: no difference detected at this scale; the interval widths "
                       "say how large a difference could have gone unseen.")  # fmt: skip
    return head + (f"{counts['better']} comparison(s) are better (95% interval above zero) and "
                   f"{counts['no difference detected']} show no difference detected: the results support the claim only partly.")  # fmt: skip


def _task_metric(record: dict, task: str) -> str | None:
    for key in ("accuracy", "rougeL", "rougeL_tf"):
        if record.get(f"task/{task}/{key}") is not None:
            return key
    return None


def task_table(rows: Sequence[CellRow], labels: dict[str, str], reference: str = "no-train", trained: str = "centralized") -> str:
    """Per task of the last evaluation (seed of the first row): each method's score ± its standard error
    (likelihood accuracy beside the majority rate, or Rouge-L of generated text), and whether ``trained``
    beats ``reference`` beyond the 95% interval of the difference (``sqrt(se_a^2 + se_b^2)``, conservative)."""
    from fedlora.report import change_verdict

    finals: dict[str, dict[str, dict]] = {}
    for r in rows:
        for ev in (e for e in r.records if e.get("type") == "eval"):
            finals.setdefault(r.method, {})[ev["split"]] = ev  # the last evaluation of each split
    methods = list(finals)
    tasks = sorted({(split, k.split("/")[1]) for m in finals.values() for split, ev in m.items() for k in ev if k.startswith("task/")})
    head = ["split", "task", "metric", "majority", *[labels.get(m, m) for m in methods]]
    both = reference in finals and trained in finals
    head += ["difference", "learnable"] if both else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, task in tasks:
        any_ev = next(finals[m][split] for m in methods if split in finals[m])
        key = _task_metric(any_ev, task)
        if key is None:
            continue
        full = f"task/{task}/{key}"
        cells = [split, task, key, "-" if any_ev.get(f"task/{task}/majority") is None else f"{any_ev[f'task/{task}/majority']:.3f}"]
        for m in methods:
            ev = finals[m].get(split, {})
            cells.append("-" if ev.get(full) is None else f"{ev[full]:.3f} ± {ev.get(full + '_se', 0.0):.3f}")
        if both:
            a, b = finals[trained].get(split, {}), finals[reference].get(split, {})
            v = change_verdict({key: b.get(full), f"{key}_se": b.get(full + "_se")}, {key: a.get(full), f"{key}_se": a.get(full + "_se")}, key)
            cells += ["-", "-"] if v is None else [f"{v[0]:+.3f} ± {1.96 * v[1]:.3f}", "yes" if v[2] == "better" else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _settings(base: dict) -> str:
    r, m, d, c, t, e = (base.get(k, {}) for k in ("run", "model", "data", "clients", "train", "eval"))
    evaluation = f"generation up to {e.get('max_new_tokens', 32)} tokens" if e.get("generate", True) else "teacher-forced evaluation"
    parts = [
        f"model `{m.get('name', '?')}` ({m.get('dtype', 'auto')})", f"{d.get('num_clients', '?')} clients ({d.get('partition', 'task')} partition)",
        f"{r.get('rounds', '?')} rounds", f"{t.get('local_steps', '?')} local steps of batch {t.get('batch_size', '?')} x {t.get('max_length', '?')} tokens",
        f"{d.get('max_train_per_task', '?')} training / {d.get('max_eval_per_task', '?')} eval examples per task",
        (f"{d.get('heldout_clients')} unseen clients" if d.get("source") == "client_folder" else f"held-out tasks {d.get('heldout_tasks')}"),
        evaluation,
    ]  # fmt: skip
    if c.get("rank_levels"):
        parts.append(f"rank levels {c['rank_levels']}")
    return "; ".join(parts)


def bench_section(out_dir: str | Path, assets: Path, doc_dir: Path) -> str:
    """Markdown of one bench output folder; its plots are written to ``assets/<bench name>/``."""
    out_dir = Path(out_dir)
    info = json.loads((out_dir / "bench.json").read_text(encoding="utf-8"))
    metrics, labels = info["metrics"], {m["name"]: m["label"] for m in info["methods"]}
    rows = collect(out_dir, info["cells"])
    (out_dir / "comparisons.json").write_text(json.dumps(comparisons_json(info, rows), indent=2), encoding="utf-8")
    aggs = aggregate(rows, metrics)
    order = dict(methods=[m["name"] for m in info["methods"]], distributions=[d["name"] for d in info["distributions"]])
    target = assets / info["name"] / "plots"  # never the bench folder itself: published cells may live there
    if target.exists():
        shutil.rmtree(target)
    plots = plot_bench(rows, aggs, info["primary_metric"], target, labels=labels, **order)
    runs = info.get("invocations") or [{}]
    commands = list(dict.fromkeys(r.get("command", "?") for r in runs))
    summary, per_cell = markdown_tables(rows, aggs, metrics, labels)
    rel = lambda p: Path(p).resolve().relative_to(doc_dir.resolve()).as_posix()  # noqa: E731
    parts = [f"## {info['name']}", "", info.get("description", ""), "",
             "- Command(s): " + ", then ".join(f"`{c}`" for c in commands),
             "- Git commit: " + ", ".join(f"`{c}`" for c in dict.fromkeys(r.get("git_commit", "?") for r in runs))
             + " (`+dirty`: run on uncommitted changes of that commit)",
             f"- Cells finished: {len(rows)} of {len(info['cells'])}; seeds {info['seeds']}",
             f"- Settings: {_settings(info.get('base_config', {}))}", *_tokenizer_note(rows, metrics, info.get("base_config", {})), "",
             preregistered_section(info, rows, labels, target, rel), "",
             "### Mean ± std over seeds", "", summary, "", claim_section(info, rows, labels), ""]  # fmt: skip
    if not info.get("claim") and not info.get("claims"):
        parts += ["### Per task (last evaluation; ± standard error over the eval examples)", "", task_table(rows, labels), ""]
    parts += [f"![{Path(p).stem}]({rel(p)})" for p in plots]
    parts += ["", "<details><summary>Every cell</summary>", "", per_cell, "", "</details>", ""]
    return "\n".join(parts)


def _tokenizer_note(rows: Sequence[CellRow], metrics: Sequence[str], base: dict) -> list[str]:
    """A warning line when Rouge-L figures of this bench come from the Latin-only tokenizer (the bundled
    tasks are English: only benches on other data are marked)."""
    old = sum(r.rouge_tokenizer == "latin-only" for r in rows)
    if not old or not any("rougeL" in m for m in metrics) or base.get("data", {}).get("source", "bundled") == "bundled":
        return []
    return [f"- **Rouge-L here is Latin-only** in {old} of {len(rows)} cells: scored with `rouge_score`'s default tokenizer, "
            "which keeps only `[a-z0-9]`, so every answer to a non-Latin reference scored 0 for every method (a shared "
            "floor, not a bias between methods, but a lower and coarser score). Generated answers were not saved, so "
            "these cells are marked rather than re-scored; fedlora now scores every script (`fedlora.eval.rouge_tokenize`)."]


def write_results_doc(out_dirs: Sequence[str | Path], doc: str | Path = "docs/results.md", *, assets: str | Path | None = None,
                      intro: str = "") -> Path:  # fmt: skip
    """Write ``doc`` from the bench output folders ``out_dirs`` (plots under ``assets``, default ``<doc dir>/results``)."""
    doc = Path(doc)
    assets = Path(assets) if assets is not None else doc.parent / "results"
    doc.parent.mkdir(parents=True, exist_ok=True)
    sections = [bench_section(d, assets, doc.parent) for d in out_dirs]
    head = ["# Benchmark results", "", "Generated by `fedlora bench doc` from the bench output folders "
            f"{', '.join(f'`{d}`' for d in out_dirs)}; do not edit by hand.", "", intro, ""]  # fmt: skip
    doc.write_text("\n".join(head + sections), encoding="utf-8")
    return doc


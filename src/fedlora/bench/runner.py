"""Run a bench grid: every cell is one engine run in its own folder, resumable cell by cell.

Layout of an output folder::

    OUT/bench.json                   the bench, its cells, the command and git commit of each invocation
    OUT/cells/<method>__<dist>__seed<k>/   a normal run folder (config.toml, metrics.jsonl, checkpoint.pt,
                                     summary.json) plus result.json once the cell has finished
    OUT/results.csv, summary.csv, results.md, plots/*.png   (fedlora.bench.results / plots)

A cell is *done* when its ``result.json`` exists (written after the last round's records); a cell
with a checkpoint but no result is *partial* and resumes from its checkpoint; any other cell starts
afresh. ``run_grid(..., resume=True)`` skips done cells, so an interrupted grid never redoes work.
The base model is loaded once per process and shared by the cells (weights restored after each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from fedlora.bench.grid import Bench, Cell
from fedlora.bench.results import RESULT_FILE

__all__ = ["RESULT_FILE", "BENCH_FILE", "CellOutcome", "GridReport", "cell_dir", "cell_state", "run_cell", "run_grid",
           "git_commit", "record_bench", "LineProgress", "publish_cell", "published_path", "refresh_published", "preregister",
           "claim_status_lines", "VERDICTS_FILE", "cost_split"]  # fmt: skip

BENCH_FILE = "bench.json"
ERROR_FILE = "cell_error.log"
VERDICTS_FILE = "verdicts.json"


@dataclass
class CellOutcome:
    """What happened to one cell in one invocation: ``done`` (ran to the end), ``skipped`` (already
    done), ``failed`` (raised; see ``cell_error.log``)."""

    cell_id: str
    status: str
    seconds: float = 0.0
    resumed_from: int = 0
    error: str = ""


@dataclass
class GridReport:
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def cell_dir(out_dir: str | Path, cell: Cell) -> Path:
    return Path(out_dir) / "cells" / cell.id


def cell_state(path: str | Path) -> str:
    """``done`` | ``partial`` | ``new`` for a cell folder."""
    from fedlora.engine.checkpoint import checkpoint_files

    path = Path(path)
    if (path / RESULT_FILE).is_file():
        return "done"
    return "partial" if checkpoint_files(path) else "new"


def git_commit(cwd: str | Path | None = None) -> str:
    """``<sha>`` of HEAD, with ``+dirty`` when the working tree has changes; ``unknown`` outside git."""
    cwd = str(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


class LineProgress:
    """Engine progress hooks printing one line per round and evaluation, prefixed with the cell id."""

    def __init__(self, prefix: str, stream: Any = None) -> None:
        self.prefix, self.stream = prefix, stream or sys.stderr

    def _print(self, text: str) -> None:
        print(f"[{self.prefix}] {text}", file=self.stream, flush=True)

    def round_end(self, record: dict) -> None:
        loss = record.get("train_loss")
        self._print(f"round {record['round']}: {record['seconds']:.1f} s, train loss {'-' if loss is None else f'{loss:.4f}'}, "
                    f"up {record['bytes_up'] / 1e6:.2f} MB, down {record['bytes_down'] / 1e6:.2f} MB")  # fmt: skip

    def client_end(self, record: dict) -> None:
        if record.get("status") in ("failed", "straggler"):
            self._print(f"  round {record['round']} {record['client']}: {record['status'].upper()} {record.get('error', '')}")
        else:
            self._print(f"  round {record['round']} {record['client']} rank {record['rank']} ({record['trained_modules']} modules): "
                        f"loss {record['loss']:.4f}, {record['seconds']:.1f} s")  # fmt: skip

    def eval_end(self, record: dict) -> None:
        from fedlora.eval.format import metric_line

        self._print(f"eval {record['split']} round {record['round']}: {metric_line(record)}")

    def message(self, text: str) -> None:
        self._print(text)

    def warning(self, text: str) -> None:
        self._print(f"WARNING: {text}")

    def __getattr__(self, name: str) -> Callable[..., None]:  # every other hook of fedlora.engine.progress.Progress
        return lambda *args, **kwargs: None


class _Models:
    """One loaded base model per ``[model]`` section, shared by the cells of a process."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple] = {}

    def get(self, cfg: Any) -> tuple:
        from fedlora.engine.build import load_base_model

        key = (cfg.model.name, cfg.model.dtype, cfg.model.device)
        if key not in self._cache:
            self._cache.clear()  # one base model per process
            self._cache[key] = load_base_model(cfg.model)
        return self._cache[key]


def _final_values(records: Sequence[dict], metrics: Sequence[str]) -> dict[str, float | None]:
    from fedlora.bench.results import final_metric

    return {m: final_metric(records, m) for m in metrics}


def run_cell(cell: Cell, path: str | Path, *, metrics: Sequence[str] = (), models: _Models | None = None,
             progress: Any = None, stop_after: int | None = None) -> dict | None:  # fmt: skip
    """Run (or resume) one cell in ``path``; returns its result (also written to ``result.json``),
    or None when ``stop_after`` stopped it before the last round."""
    from fedlora.bench.baselines import install_plan_mode
    from fedlora.engine.run import Engine
    from fedlora.eval.metrics import ROUGE_TOKENIZER

    from fedlora.engine.metrics_log import METRICS_FILE

    path = Path(path)
    resume = cell_state(path) == "partial"
    if not resume:
        (path / METRICS_FILE).unlink(missing_ok=True)  # a cell killed before its first checkpoint starts afresh
    models = models or _Models()
    engine = Engine(cell.config, path, model_and_tokenizer=models.get(cell.config), progress=progress)
    try:
        engine.setup()
        if cell.method.plan:
            install_plan_mode(engine, cell.method.plan)
        no_train = cell.method.plan == "no-train"
        result = engine.run(resume=resume, stop_after=0 if no_train else stop_after)
    finally:
        if getattr(engine, "trainer", None) is not None:
            engine.trainer.restore_base()  # FLoRA merges into the shared base weights
    if result.completed_rounds < (0 if no_train else cell.config.run.rounds):
        return None
    s = result.summary
    out = {
        "cell": cell.id, "method": cell.method.name, "method_label": cell.method.label, "distribution": cell.distribution.name,
        "distribution_label": cell.distribution.label, "seed": cell.seed, "strategy": cell.config.strategy.name,
        "plan": cell.method.plan, "rounds": result.completed_rounds, "clients": len(engine.data.client_ids),
        "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"], "seconds": s.get("seconds"),
        "failed_clients": s["failed_clients"], "rejected_updates": s["rejected_updates"],
        "rouge_tokenizer": ROUGE_TOKENIZER,
        "final": _final_values(result.records, metrics), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    _write_json(path / RESULT_FILE, out)
    return out


def _write_json(path: Path, data: Any) -> None:
    """Atomic write; a unique temporary name, so that two grid processes publishing into one folder never mix."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def record_bench(bench: Bench, out_dir: str | Path, command: str | None = None, *, invocation: bool = True) -> None:
    """Write ``OUT/bench.json`` (the bench's grid and labels); ``invocation`` appends this command and git commit."""
    out_dir = Path(out_dir)
    path = out_dir / BENCH_FILE
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    runs = old.get("invocations", [])
    if invocation:
        runs = runs + [{"command": command or " ".join(sys.argv), "git_commit": git_commit(),
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}]  # fmt: skip
    data = {
        "name": bench.name, "description": bench.description, "bench_file": str(bench.path) if bench.path else None,
        "seeds": list(bench.seeds), "primary_metric": bench.primary_metric, "metrics": list(bench.metrics),
        "methods": [{"name": m.name, "label": m.label, "plan": m.plan, "description": m.description} for m in bench.methods],
        "distributions": [{"name": d.name, "label": d.label, "description": d.description} for d in bench.distributions],
        "claim": None if bench.claim is None else {"text": bench.claim.text, "method": bench.claim.method,
                                                    "baselines": list(bench.claim.baselines)},
        "claims": [c.to_dict() for c in bench.claims],
        "cells": [c.id for c in bench.cells], "base_config": bench.cells[0].raw if bench.cells else {}, "invocations": runs,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, data)


def published_path(publish_dir: str | Path, cell_id: str) -> Path:
    return Path(publish_dir) / "cells" / f"{cell_id}.json"


def publish_cell(path: str | Path, publish_dir: str | Path, cell_id: str) -> Path:
    """Copy a finished cell's result and its round and evaluation records (no checkpoint, no per-client
    lines) to ``publish_dir/cells/<cell>.json``: small, self-contained, meant to be committed."""
    from fedlora.engine.metrics_log import read_metrics

    result = json.loads((Path(path) / RESULT_FILE).read_text(encoding="utf-8"))
    records = [r for r in read_metrics(path) if r.get("type") in ("round", "eval")]
    target = published_path(publish_dir, cell_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_json(target, {**result, "records": records})
    return target


def refresh_published(bench: Bench, publish_dir: str | Path) -> Path:
    """Rewrite ``publish_dir/bench.json``, ``comparisons.json`` and (with pre-registered claims)
    ``verdicts.json`` from the published cells."""
    from fedlora.bench.doc import claim_statuses, comparisons_json
    from fedlora.bench.results import collect

    publish_dir = Path(publish_dir)
    record_bench(bench, publish_dir, invocation=False)
    info = json.loads((publish_dir / BENCH_FILE).read_text(encoding="utf-8"))
    rows = collect(publish_dir, [c.id for c in bench.cells])
    path = publish_dir / "comparisons.json"
    _write_json(path, comparisons_json(info, rows))
    if bench.claims:
        _write_json(publish_dir / VERDICTS_FILE, [s.to_dict() for s in claim_statuses(info, rows)])
    return path


def claim_status_lines(bench: Bench, folder: str | Path) -> list[str]:
    """One line per pre-registered claim: its status from the finished cells in ``folder``."""
    from fedlora.bench.design import analyse_claim
    from fedlora.bench.results import collect

    rows = collect(folder, [c.id for c in bench.cells])
    return [analyse_claim(c, rows, bench.seeds).line() for c in bench.claims]


def preregister(bench: Bench, folder: str | Path) -> Path | None:
    """Write (or check) ``folder/preregistration.json`` for a bench with claims (:mod:`fedlora.bench.design`).

    Raises:
        PreregistrationError: the folder pre-registered another design and holds finished cells.
    """
    from fedlora.bench.design import check_or_write_preregistration

    if not bench.claims:
        return None
    folder = Path(folder)
    finished = sum(cell_state(cell_dir(folder, c)) == "done" or published_path(folder, c.id).is_file() for c in bench.cells)
    return check_or_write_preregistration(bench, folder, git_commit(), finished)


def run_grid(bench: Bench, out_dir: str | Path, *, resume: bool = False, only: Callable[[Cell], bool] | None = None,
             log: Callable[[str], None] | None = None, verbose: bool = True, command: str | None = None,
             max_cells: int | None = None, publish: str | Path | None = None) -> GridReport:  # fmt: skip
    """Run every cell of ``bench`` under ``out_dir``; with ``resume`` skip done cells and continue partial ones.

    Args:
        only: run only the cells it accepts. log: where status lines go (default stderr).
        verbose: per-round lines of each cell. command: recorded in ``bench.json`` (default ``sys.argv``).
        max_cells: stop after running this many cells (for tests and time-boxed sessions).
        publish: a folder (e.g. ``docs/results/<bench>``) where each finished cell is published
            (:func:`publish_cell`) with ``bench.json`` and ``comparisons.json`` refreshed; a cell
            published there counts as done, so a grid continues in a fresh clone.

    Raises:
        FileExistsError: ``out_dir`` holds cells and ``resume`` is False.
    """
    out_dir = Path(out_dir)
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = [c for c in bench.cells if cell_state(cell_dir(out_dir, c)) != "new"]
    if started and not resume:
        raise FileExistsError(f"{out_dir} already holds {len(started)} started or finished cells of this bench; pass --resume "
                              "to continue without redoing finished cells, or choose another --out")  # fmt: skip
    for folder in (out_dir, publish):
        if folder is not None:
            preregister(bench, folder)
    record_bench(bench, out_dir, command)
    if publish is not None:
        record_bench(bench, publish, command)
    report, models, ran = GridReport(), _Models(), 0
    cells = [c for c in bench.cells if only is None or only(c)]
    cells.sort(key=lambda c: bench.seeds.index(c.seed))  # seed by seed: paired comparisons exist early in a long grid
    for i, cell in enumerate(cells, 1):
        path = cell_dir(out_dir, cell)
        state = cell_state(path)
        if publish is not None and published_path(publish, cell.id).is_file():
            report.outcomes.append(CellOutcome(cell.id, "skipped"))
            log(f"[{i}/{len(cells)}] {cell.id}: published already in {publish}, skipped")
            continue
        if state == "done" and publish is not None:
            publish_cell(path, publish, cell.id)
            refresh_published(bench, publish)
        if state == "done":
            report.outcomes.append(CellOutcome(cell.id, "skipped"))
            log(f"[{i}/{len(cells)}] {cell.id}: done already, skipped")
            continue
        if max_cells is not None and ran >= max_cells:
            break
        log(f"[{i}/{len(cells)}] {cell.id}: {'resuming' if state == 'partial' else 'starting'}")
        outcome = _run_one(cell, path, bench, models, verbose, log)
        report.outcomes.append(outcome)
        if publish is not None and outcome.status == "done":
            log(f"  published {publish_cell(path, publish, cell.id)}; comparisons in {refresh_published(bench, publish)}")
        ran += 1
    return report


def cost_split(path: str | Path, seconds: float | None = None) -> dict[str, float]:
    """Where a cell's time went, from its metrics log: ``training`` (the rounds' ``seconds``), ``evaluation``
    (the evaluations' ``seconds``) and ``setup`` (the rest of ``seconds``, the wall time of the invocation
    that ran them all; without it, the run's own ``seconds`` from ``result.json``)."""
    from fedlora.bench.results import time_split
    from fedlora.engine.metrics_log import read_metrics

    training, evaluation = time_split(read_metrics(path))
    if seconds is None:
        result = Path(path) / RESULT_FILE
        seconds = float(json.loads(result.read_text(encoding="utf-8")).get("seconds") or 0.0) if result.is_file() else 0.0
    return {"setup": max(0.0, seconds - training - evaluation), "training": training, "evaluation": evaluation, "total": seconds}


def _run_one(cell: Cell, path: Path, bench: Bench, models: _Models, verbose: bool, log: Callable[[str], None]) -> CellOutcome:
    from fedlora.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path) if cell_state(path) == "partial" else None
    started = time.perf_counter()
    progress = LineProgress(cell.id) if verbose else None
    try:
        result = run_cell(cell, path, metrics=bench.metrics, models=models, progress=progress)
    except Exception as err:  # one broken cell must not stop the grid
        path.mkdir(parents=True, exist_ok=True)
        (path / ERROR_FILE).write_text(traceback.format_exc(), encoding="utf-8")
        log(f"  {cell.id}: FAILED {type(err).__name__}: {err} (traceback in {path / ERROR_FILE})")
        return CellOutcome(cell.id, "failed", time.perf_counter() - started, error=f"{type(err).__name__}: {err}")
    seconds = time.perf_counter() - started
    primary = (result or {}).get("final", {}).get(bench.primary_metric)
    split = cost_split(path, seconds)
    log(f"  {cell.id}: done in {seconds:.0f} s (set-up {split['setup']:.0f} s, training {split['training']:.0f} s, evaluation "
        f"{split['evaluation']:.0f} s this invocation), {bench.primary_metric} = {'-' if primary is None else f'{primary:.4f}'}")
    return CellOutcome(cell.id, "done", seconds, resumed_from=int(ckpt["round"]) if ckpt else 0)

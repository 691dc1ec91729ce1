"""Evaluate an earlier round of a run: the global model of any kept checkpoint, on the run's own splits.

A run keeps its last ``run.keep_checkpoints`` checkpoints (``checkpoint.pt`` the latest,
``checkpoint.1.pt`` the one before, ...). Evaluating the one before the last answers "did the last
round make the model worse?" without training anything: for example whether one client of the last
round turned the model's answers to its own format. The checkpoint's global adapter is exported
(:func:`fedlora.export.export_run`, any method), loaded on the run's base model with PEFT, and
evaluated with the run's ``[eval]`` settings on the examples the engine evaluates (the run's data
split rebuilt exactly by :func:`fedlora.engine.data.build_data`, same seed; ``eval.seen_per_task``
kept). Prints one metric line per checkpoint, so rounds compare side by side, and beside it the
run's own logged figure for that round where the run evaluated it (a check that both agree).

    python benchmarks/eval_checkpoint.py /tmp/bench/bucket_effect_ni/cells/flexlora__uniform__seed0 --checkpoints 0 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from fedlora.engine.build import eval_kwargs, load_base_model
from fedlora.engine.checkpoint import CHECKPOINT_FILE, checkpoint_files
from fedlora.engine.data import build_data
from fedlora.engine.metrics_log import read_metrics
from fedlora.engine.run import first_per_task
from fedlora.eval import evaluate
from fedlora.eval.format import metric_line
from fedlora.export import export_run, load_run

SPLITS = ("heldout", "eval")


def checkpoint_path(run_dir: Path, age: int) -> Path:
    """``checkpoint.pt`` for ``age`` 0, ``checkpoint.<age>.pt`` otherwise; a clear error when it is not kept."""
    path = run_dir / (CHECKPOINT_FILE if age == 0 else f"checkpoint.{age}.pt")
    if not path.is_file():
        kept = ", ".join(p.name for p in checkpoint_files(run_dir)) or "none"
        raise FileNotFoundError(f"{path} does not exist; the run keeps {kept} (--checkpoints counts back from 0, the latest)")
    return path


def evaluate_checkpoint(run_dir: str | Path, age: int, split: str = "heldout", base=None) -> tuple[int, dict[str, float]]:
    """``(round, metrics)`` of the global model in checkpoint ``age`` (0 the latest) on the run's ``split``."""
    from peft import PeftModel

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    source = checkpoint_path(run_dir, age)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(source, Path(tmp) / CHECKPOINT_FILE)  # a run folder holding only that checkpoint
        cfg, ckpt = load_run(tmp)
        data = build_data(cfg)
        examples = data.heldout if split == "heldout" else first_per_task(data.eval, cfg.eval.seen_per_task)  # as the engine
        if not examples:
            raise ValueError(f"{run_dir}: the run has no {split} examples; pass --split {'eval' if split == 'heldout' else 'heldout'}")
        paths = export_run(tmp, Path(tmp) / "export")
        model, tokenizer = base or load_base_model(cfg.model)
        peft_model = PeftModel.from_pretrained(model, str(paths["adapter"])).eval()
        with torch.no_grad():
            metrics = evaluate(peft_model, tokenizer, examples, **eval_kwargs(cfg))
        peft_model.unload()  # the base model is reused for the next checkpoint
    return int(ckpt["round"]), metrics


def logged(run_dir: Path, server_round: int, split: str) -> dict | None:
    """The run's own eval record of ``split`` after ``server_round`` (None when that round was not evaluated)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    return next((r for r in read_metrics(path) if r.get("type") == "eval" and r.get("round") == server_round and r.get("split") == split), None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run folder (a bench cell folder under --out, not a published cell file)")
    p.add_argument("--checkpoints", type=int, nargs="+", default=[0, 1],
                   help="which kept checkpoints, counted back from 0 = checkpoint.pt (default: 0 1)")
    p.add_argument("--split", default="heldout", choices=SPLITS)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    cfg, _ = load_run(run_dir)
    base = load_base_model(cfg.model)
    for age in args.checkpoints:
        server_round, metrics = evaluate_checkpoint(run_dir, age, args.split, base)
        print(f"{run_dir.name} round {server_round} ({checkpoint_path(run_dir, age).name}), {args.split}: {metric_line(metrics)}", flush=True)
        own = logged(run_dir, server_round, args.split)
        if own is not None:
            print(f"  the run's own log, round {server_round}: {metric_line(own)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

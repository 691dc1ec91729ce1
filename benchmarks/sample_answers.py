"""Read what a run's global model answers: greedy answers on evenly spaced examples of one split.

Rouge-L says *how much* a model's answers overlap the references; reading a sample says *why*
(a format collapse, answers in the wrong language, long answers where a label was asked). This
exports the run's global adapter (:func:`fedlora.export.export_run`, any method), loads it on the
run's base model with PEFT, rebuilds the run's data split exactly (:func:`fedlora.engine.data.build_data`,
same seed) and prints each example's task, reference and answer, with two counts: answers mostly
of digits and answers mostly outside the Latin script.

    python benchmarks/sample_answers.py /tmp/bench/bucket_effect_ni/cells/fedit-max-drop__uniform__seed2 --n 16
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence

import torch

from fedlora.engine.build import load_base_model
from fedlora.engine.data import build_data
from fedlora.eval.generation import generate_answers
from fedlora.export import export_run, load_run

SPLITS = ("heldout", "eval")


def mostly(text: str, is_kind) -> bool:
    """More than a third of the characters of ``text`` are of the kind (False for an empty text)."""
    return bool(text) and sum(map(is_kind, text)) > len(text) / 3


def is_non_latin(c: str) -> bool:
    return ord(c) > 0x24F  # past Latin Extended-B


def evenly_spaced(items: Sequence, n: int) -> list:
    """``n`` items spread over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def sample_answers(run_dir: str, n: int, split: str = "heldout", max_new_tokens: int = 24) -> list[tuple]:
    """``(task, reference, answer)`` for ``n`` evenly spaced examples of the run's ``split``."""
    from peft import PeftModel

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    cfg, _ = load_run(run_dir)
    examples = evenly_spaced(getattr(build_data(cfg), split), n)
    if not examples:
        raise ValueError(f"{run_dir}: the run has no {split} examples; pass --split {'eval' if split == 'heldout' else 'heldout'}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_run(run_dir, tmp)
        base, tokenizer = load_base_model(cfg.model)
        model = PeftModel.from_pretrained(base, str(paths["adapter"])).eval()
        with torch.no_grad():
            answers = generate_answers(model, tokenizer, examples, max_new_tokens=max_new_tokens)
    return [(ex.task, ex.output, a) for ex, a in zip(examples, answers)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run folder (a bench cell folder under --out, not a published cell file)")
    p.add_argument("--n", type=int, default=16, help="how many examples (default 16)")
    p.add_argument("--split", default="heldout", choices=SPLITS)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = sample_answers(args.run_dir, args.n, args.split, args.max_new_tokens)
    answers = [a for _, _, a in rows]
    print(f"{args.run_dir} ({args.split}): {sum(mostly(a, str.isdigit) for a in answers)}/{len(rows)} answers mostly digits, "
          f"{sum(mostly(a, is_non_latin) for a in answers)}/{len(rows)} mostly non-Latin")  # fmt: skip
    for task, ref, ans in rows:
        print(f"  [{task[:30]}] reference {ref[:40]!r}  answer {ans[:60]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``evaluate``: Rouge-L of generated answers, teacher-forced Rouge-L, answer loss and accuracy.

Metrics (all examples unless said otherwise):
- ``rougeL``: mean Rouge-L F1 of the greedy-generated answer vs the reference (``generate=True``).
- ``rougeL_tf``: mean Rouge-L F1 of the teacher-forced argmax answer vs the reference (the
  comparison of the FlexLoRA paper; cheap, one forward pass, no generation).
- ``loss``: mean NLL per answer token (token-weighted over the examples).
- ``accuracy``: share of classification examples (``choices`` set) whose generated answer names
  the gold choice (rule in :mod:`fedlora.eval.metrics`); absent when there is none or ``generate=False``.
- ``task/<name>/<metric>`` for each of the above per task, ``n_examples`` and ``task/<name>/n_examples``.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from fedlora.data.example import Example
from fedlora.eval.generation import score_and_generate
from fedlora.eval.metrics import is_correct, rouge_l

__all__ = ["evaluate"]

Progress = Callable[[int, int], None]


def evaluate(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_length: int = 256,
    generate: bool = True,
    progress: Progress | bool | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` (with whatever adapter is installed) on ``examples``.

    Args:
        model, tokenizer: a causal LM and its tokenizer (pad token required for batching).
        examples: the evaluation examples.
        max_new_tokens: generation budget per answer.
        batch_size: examples per forward/generate batch.
        max_length: token limit of the prompt (cut in the middle) and of the reference answer.
        generate: ``False`` skips generation (no ``rougeL``/``accuracy``): a fast, loss-only pass.
        progress: ``progress(done, total)`` callback in examples processed, ``True`` for a
            ``rich`` progress bar, ``None``/``False`` for silence.

    Returns:
        ``{metric: value}`` as described in the module docstring. Deterministic.
    """
    if not examples:
        raise ValueError("evaluate got no examples; pass at least one Example")
    if max_new_tokens < 1 or batch_size < 1 or max_length < 2:
        raise ValueError(f"need max_new_tokens >= 1, batch_size >= 1, max_length >= 2; got {max_new_tokens}, {batch_size}, {max_length}")
    with _eval_mode(model), _progress(progress, len(examples)) as tick:
        forced, answers = score_and_generate(model, tokenizer, examples, max_new_tokens=max_new_tokens if generate else None,
                                             batch_size=batch_size, max_length=max_length, tick=tick)
    return _aggregate(examples, forced, answers)


def _aggregate(examples, forced, answers) -> dict[str, float]:
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for i, ex in enumerate(examples):
        for group in ("", f"task/{ex.task}/"):
            s = sums[group]
            s["n"] += 1
            s["nll"] += forced[i].nll_sum
            s["tokens"] += forced[i].tokens
            s["rougeL_tf"] += rouge_l(forced[i].text, ex.output)
            if answers is not None:
                s["rougeL"] += rouge_l(answers[i], ex.output)
                if ex.choices is not None:
                    s["n_cls"] += 1
                    s["correct"] += float(is_correct(answers[i], ex.output, ex.choices))
    out: dict[str, float] = {}
    for group in sorted(sums, key=lambda g: (g != "", g)):
        s = sums[group]
        if answers is not None:
            out[f"{group}rougeL"] = s["rougeL"] / s["n"]
        out[f"{group}rougeL_tf"] = s["rougeL_tf"] / s["n"]
        out[f"{group}loss"] = s["nll"] / s["tokens"] if s["tokens"] else float("nan")
        if s["n_cls"]:
            out[f"{group}accuracy"] = s["correct"] / s["n_cls"]
        out[f"{group}n_examples"] = s["n"]
    return out


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextmanager
def _progress(progress: Progress | bool | None, total: int) -> Iterator[Callable[[int], None] | None]:
    if not progress:
        yield None
        return
    if callable(progress):
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        yield tick
        return
    from rich.progress import Progress as RichProgress

    with RichProgress(transient=True) as bar:
        task = bar.add_task("evaluating", total=total)
        yield lambda n: bar.advance(task, n)

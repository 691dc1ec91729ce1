"""``evaluate``: likelihood accuracy on classification, Rouge-L on generation, answer loss; each with its standard error.

Metrics, over all examples of a split and per task (``task/<name>/<metric>``):
- ``accuracy``: classification examples (``choices`` set) whose gold choice has the highest
  log-likelihood as the answer (:mod:`fedlora.eval.likelihood`, lm-evaluation-harness style), beside
  ``majority`` (the accuracy of always answering each task's most frequent gold label in this eval
  set: the bar a model that learned only the format or one label reaches) and ``chance`` (mean ``1/K``).
- ``rougeL``: mean Rouge-L F1 of the greedy-generated answer on generation examples (``generate=True``).
- ``rougeL_tf``: mean Rouge-L F1 of the teacher-forced argmax answer on generation examples (the
  FlexLoRA paper's cheap comparison; one forward pass, no generation).
- ``loss``: NLL per answer token of the reference answers, token-weighted over all examples.
- ``<metric>_se``: its standard error (:mod:`fedlora.eval.stats`); ``n_examples``, ``n_cls``, ``n_gen`` and
  ``n_tokens`` (answer tokens behind ``loss``).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from fedlora.data.example import Example
from fedlora.eval.generation import score_and_generate
from fedlora.eval.likelihood import choice_scores, predict_choices
from fedlora.eval.metrics import normalize_answer, rouge_l
from fedlora.eval.stats import mean_se, ratio_se

__all__ = ["evaluate", "per_example_scores", "summarize"]

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
        examples: the evaluation examples (classification and generation may mix).
        max_new_tokens: generation budget per answer.
        batch_size: sequences per forward/generate batch.
        max_length: token limit of the prompt (cut in the middle) and of the reference answer.
        generate: ``False`` skips generation (no ``rougeL``): likelihood accuracy, teacher-forced
            Rouge-L and loss only.
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
        rows = per_example_scores(model, tokenizer, examples, max_new_tokens=max_new_tokens if generate else None,
                                  batch_size=batch_size, max_length=max_length, tick=tick)
    return summarize(examples, rows)


def per_example_scores(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int | None, batch_size: int,
                       max_length: int, tick: Callable[[int], None] | None = None) -> list[dict[str, float]]:  # fmt: skip
    """One dict per example: ``nll``, ``tokens``; ``correct`` (classification); ``rougeL_tf`` and
    ``rougeL`` (generation, the latter when ``max_new_tokens`` is not None)."""
    gen_idx = [i for i, ex in enumerate(examples) if not ex.is_classification]
    cls_idx = [i for i, ex in enumerate(examples) if ex.is_classification]
    rows: list[dict[str, float]] = [{} for _ in examples]
    if gen_idx:
        gen = [examples[i] for i in gen_idx]
        forced, answers = score_and_generate(model, tokenizer, gen, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                             max_length=max_length, tick=tick)  # fmt: skip
        for j, i in enumerate(gen_idx):
            rows[i].update(nll=forced[j].nll_sum, tokens=forced[j].tokens, rougeL_tf=rouge_l(forced[j].text, gen[j].output))
            if answers is not None:
                rows[i]["rougeL"] = rouge_l(answers[j], gen[j].output)
    if cls_idx:
        cls = [examples[i] for i in cls_idx]
        scores = choice_scores(model, tokenizer, cls, batch_size=batch_size, max_length=max_length, tick=tick)
        predicted = predict_choices([[-s.nll_sum for s in row] for row in scores], cls)
        for j, i in enumerate(cls_idx):
            gold = _gold_index(cls[j])  # the gold choice's score is the reference answer's loss
            rows[i].update(nll=scores[j][gold].nll_sum, tokens=scores[j][gold].tokens,
                           correct=float(normalize_answer(predicted[j]) == normalize_answer(cls[j].output)))
    return rows


def _gold_index(ex: Example) -> int:
    norm = [normalize_answer(c) for c in ex.choices]
    if normalize_answer(ex.output) not in norm:
        raise ValueError(f"task {ex.task!r}: the answer {ex.output!r} is not one of its choices {list(ex.choices)}; "
                         "a classification example's output must be one of its choices")
    return norm.index(normalize_answer(ex.output))


def _majority(examples: Sequence[Example]) -> float:
    counts: dict[str, int] = defaultdict(int)
    for ex in examples:
        counts[normalize_answer(ex.output)] += 1
    return max(counts.values()) / len(examples)


def summarize(examples: Sequence[Example], rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Metrics with standard errors from :func:`per_example_scores`, overall and per task."""
    groups: dict[str, list[int]] = {"": list(range(len(examples)))}
    for i, ex in enumerate(examples):
        groups.setdefault(f"task/{ex.task}/", []).append(i)
    out: dict[str, float] = {}
    for prefix in sorted(groups, key=lambda g: (g != "", g)):
        idx = groups[prefix]
        out.update({f"{prefix}{k}": v for k, v in _group_metrics([examples[i] for i in idx], [rows[i] for i in idx]).items()})
    return out


def _group_metrics(examples: Sequence[Example], rows: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    cls = [(ex, r) for ex, r in zip(examples, rows) if "correct" in r]
    if cls:
        out["accuracy"], out["accuracy_se"] = mean_se([r["correct"] for _, r in cls])
        by_task: dict[str, list[Example]] = defaultdict(list)
        for ex, _ in cls:
            by_task[ex.task].append(ex)
        out["majority"] = sum(_majority(t) * len(t) for t in by_task.values()) / len(cls)
        out["chance"] = sum(1 / len(ex.choices) for ex, _ in cls) / len(cls)
    for metric in ("rougeL", "rougeL_tf"):
        values = [r[metric] for r in rows if metric in r]
        if values:
            out[metric], out[f"{metric}_se"] = mean_se(values)
    out["loss"], out["loss_se"] = ratio_se([r["nll"] for r in rows], [r["tokens"] for r in rows])
    out["n_examples"], out["n_cls"] = len(rows), len(cls)
    out["n_gen"], out["n_tokens"] = len(rows) - len(cls), sum(r["tokens"] for r in rows)
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

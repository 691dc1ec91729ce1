"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores multiple choice.

For a classification example with choices ``c_1 .. c_K`` the model scores each choice as the
answer to the same prompt: ``ll_k = sum_t log p(answer_k[t] | prompt, answer_k[<t])`` over the
answer tokens of ``encode_example`` (the choice text and the end-of-turn token, so a choice must
also be a *complete* answer). The prediction is ``argmax_k ll_k`` (ties: the first choice), so a
model that only learned the answer format, or always answers one label, gains nothing over the
majority-class rate. All (example, choice) pairs go through :func:`teacher_forced` in one batched,
length-sorted pass: one forward per choice, no generation.

Reference: Gao et al., "A framework for few-shot language model evaluation" (lm-evaluation-harness),
``acc`` of ``output_type: multiple_choice``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from fedlora.data.example import Example
from fedlora.eval.generation import TeacherForced, teacher_forced

__all__ = ["choice_scores", "choice_loglikelihoods", "predict_choices"]


def choice_loglikelihoods(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
                          tick: Callable[[int], None] | None = None) -> list[list[float]]:  # fmt: skip
    """Per example, the log-likelihood of each of its ``choices`` as the answer (in ``choices`` order)."""
    scores = choice_scores(model, tokenizer, examples, batch_size=batch_size, max_length=max_length, tick=tick)
    return [[-s.nll_sum for s in row] for row in scores]


def choice_scores(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
                  tick: Callable[[int], None] | None = None) -> list[list[TeacherForced]]:  # fmt: skip
    """Per example, the teacher-forced score (answer NLL, tokens) of each of its ``choices`` as the answer.

    Raises:
        ValueError: an example has no choices.
    """
    missing = [i for i, ex in enumerate(examples) if not ex.choices]
    if missing:
        raise ValueError(f"choice_loglikelihoods: examples {missing[:5]} have no choices; score generation tasks "
                         "with Rouge-L instead")  # fmt: skip
    pairs = [replace(ex, output=choice) for ex in examples for choice in ex.choices]
    scored = teacher_forced(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    out, at = [], 0
    for ex in examples:
        out.append(scored[at : at + len(ex.choices)])
        at += len(ex.choices)
    if tick:
        tick(len(examples))
    return out


def predict_choices(loglikelihoods: Sequence[Sequence[float]], examples: Sequence[Example]) -> list[str]:
    """The highest-scoring choice of each example (the first one on a tie)."""
    return [ex.choices[max(range(len(ll)), key=lambda k: (ll[k], -k))] for ll, ex in zip(loglikelihoods, examples)]

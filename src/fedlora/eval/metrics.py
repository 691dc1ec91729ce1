"""Text metrics: Rouge-L F1 and the classification accuracy rule.

Rouge-L is ``rouge_score``'s ``RougeScorer(["rougeL"])`` F-measure (the metric of FlexLoRA and
most federated instruction-tuning papers) over :class:`fedlora.eval.rouge_tokenize.MultilingualTokenizer`
tokens: on ASCII text exactly ``rouge_score``'s default (lowercased, Porter-stemmed ``[a-z0-9]`` runs),
and on other scripts Unicode words (character tokens for Chinese, Japanese, Thai), where the default
tokenizer finds no token and scores every answer 0. Results written before this tokenizer (fedlora
results files without ``rouge_tokenizer``) used the default one; ``ROUGE_TOKENIZER`` names this one.

Accuracy rule (classification examples, ``Example.choices`` set): the generated answer and the
choices are normalised (lowercase, punctuation -> space, whitespace collapsed). The predicted
label is, in order: (1) the choice equal to the answer; (2) the longest choice the answer starts
with, followed by a space or the end ("positive, because ..." -> "positive"); (3) the only choice
named anywhere in the answer as whole words ("The sentiment is positive." -> "positive"; a choice
contained in a longer named choice, like "good" in "not good", does not count separately).
The example is correct when the predicted label is the gold ``output``. No label (nothing named,
or several choices named) is wrong.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Sequence

__all__ = ["rouge_l", "normalize_answer", "predicted_choice", "is_correct", "ROUGE_TOKENIZER"]

ROUGE_TOKENIZER = "multilingual-v1"
"""The tokenizer behind ``rouge_l``, recorded with every evaluation (``rouge_score``'s default was ``latin-only``)."""

_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    from fedlora.eval.rouge_tokenize import MultilingualTokenizer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=MultilingualTokenizer(use_stemmer=True))


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F1 of ``prediction`` against ``reference`` (stemmed, case-insensitive, any script), in [0, 1]."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed and stripped."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def predicted_choice(answer: str, choices: Sequence[str]) -> str | None:
    """The choice the answer names under the accuracy rule (module docstring), or ``None``."""
    norm = normalize_answer(answer)
    options = {normalize_answer(c): c for c in choices if normalize_answer(c)}
    if norm in options:
        return options[norm]
    starts = [n for n in options if norm.startswith(n + " ")]
    if starts:
        return options[max(starts, key=len)]
    padded = f" {norm} "
    named = [n for n in options if f" {n} " in padded]
    named = [n for n in named if not any(n != m and f" {n} " in f" {m} " for m in named)]
    return options[named[0]] if len(named) == 1 else None


def is_correct(answer: str, gold: str, choices: Sequence[str]) -> bool:
    """Whether the generated ``answer`` names the ``gold`` choice (module docstring)."""
    choice = predicted_choice(answer, choices)
    return choice is not None and normalize_answer(choice) == normalize_answer(gold)

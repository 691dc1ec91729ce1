"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores multiple choice.

For a classification example with choices ``c_1 .. c_K`` the model scores each choice as the
answer to the same prompt: ``ll_k = sum_t log p(answer_k[t] | prompt, answer_k[<t])`` over the
answer tokens of ``encode_example`` (the choice text and the end-of-turn token, so a choice must
also be a *complete* answer). The prediction is ``argmax_k ll_k`` (ties: the first choice), so a
model that only learned the answer format, or always answers one label, gains nothing over the
majority-class rate. Each prompt is encoded once and its KV cache shared by the choices
(:func:`choice_scores`); batches are sorted by prompt length; no generation.

Reference: Gao et al., "A framework for few-shot language model evaluation" (lm-evaluation-harness),
``acc`` of ``output_type: multiple_choice``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import torch

from fedlora.data.example import Example
from fedlora.data.formatting import IGNORE_INDEX, encode_example, encode_prompt
from fedlora.eval.generation import TeacherForced, _accepts_logits_to_keep, _by_length, _left_pad, cache_kwarg, output_cache

__all__ = ["choice_scores", "choice_loglikelihoods", "predict_choices"]


def choice_loglikelihoods(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
                          tick: Callable[[int], None] | None = None) -> list[list[float]]:  # fmt: skip
    """Per example, the log-likelihood of each of its ``choices`` as the answer (in ``choices`` order)."""
    scores = choice_scores(model, tokenizer, examples, batch_size=batch_size, max_length=max_length, tick=tick)
    return [[-s.nll_sum for s in row] for row in scores]


@torch.no_grad()
def choice_scores(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
                  tick: Callable[[int], None] | None = None) -> list[list[TeacherForced]]:  # fmt: skip
    """Per example, the teacher-forced score (answer NLL, answer tokens) of each of its ``choices``.

    Each prompt is encoded once: one forward pass over a batch of left-padded prompts keeps its KV
    cache and the last position's logits (which score every choice's first token); each choice slot
    then runs only its own tokens on top of that cache, which is cropped back to the prompt after
    each slot. ``text`` of the results is empty (no argmax answer is decoded).

    Raises:
        ValueError: an example has no choices.
    """
    missing = [i for i, ex in enumerate(examples) if not ex.choices]
    if missing:
        raise ValueError(f"choice_scores: examples {missing[:5]} have no choices; score generation tasks "
                         "with Rouge-L instead")  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [encode_prompt(tokenizer, ex, max_length) for ex in examples]
    answers = [[_answer_ids(tokenizer, replace(ex, output=c), max_length) for c in ex.choices] for ex in examples]
    out: list[list[TeacherForced]] = [[] for _ in examples]
    for idx in _by_length([len(p) for p in prompts], batch_size):
        for row, scores in zip(idx, _score_batch(model, [prompts[i] for i in idx], [answers[i] for i in idx], pad_id)):
            out[row] = scores
        if tick:
            tick(len(idx))
    return out


def _answer_ids(tokenizer, ex: Example, max_length: int) -> list[int]:
    return [t for t in encode_example(tokenizer, ex, max_length)["labels"] if t != IGNORE_INDEX]


def _score_batch(model, prompts: list[list[int]], answers: list[list[list[int]]], pad_id: int) -> list[list[TeacherForced]]:
    """Answer NLL of every choice of a batch of prompts, re-using the prompts' KV cache."""
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    P = ids.shape[1]
    kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **kwargs)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each answer's first token
    cache, next_pos = output_cache(out), mask.sum(-1, keepdim=True)
    results = [[None] * len(a) for a in answers]
    for k in range(max(len(a) for a in answers)):
        chosen = [a[k] if k < len(a) else a[0] for a in answers]
        nll = -first.gather(1, torch.tensor([c[0] for c in chosen], device=device)[:, None])[:, 0]
        width = max(len(c) for c in chosen) - 1
        if width > 0:  # tokens 1.. are predicted from the choice's own earlier tokens on top of the prompt cache
            cids = torch.full((len(chosen), width + 1), pad_id, dtype=torch.long)
            cmask = torch.zeros_like(cids)
            for r, c in enumerate(chosen):
                cids[r, : len(c)] = torch.tensor(c)
                cmask[r, : len(c)] = 1
            cids, cmask = cids.to(device), cmask.to(device)
            step = model(input_ids=cids[:, :-1], attention_mask=torch.cat([mask, cmask[:, :-1]], dim=1),
                         position_ids=next_pos + torch.arange(width, device=device), use_cache=True,
                         **{cache_kwarg(model.forward): cache})
            logp = torch.log_softmax(step.logits.float(), dim=-1).gather(2, cids[:, 1:, None])[..., 0]
            nll = nll - (logp * cmask[:, 1:]).sum(-1)
            cache.crop(-width)  # back to the prompt
        for r, a in enumerate(answers):
            if k < len(a):
                results[r][k] = TeacherForced(float(nll[r]), len(a[k]), "")
    return results


def predict_choices(loglikelihoods: Sequence[Sequence[float]], examples: Sequence[Example]) -> list[str]:
    """The highest-scoring choice of each example (the first one on a tie)."""
    return [ex.choices[max(range(len(ll)), key=lambda k: (ll[k], -k))] for ll, ex in zip(loglikelihoods, examples)]

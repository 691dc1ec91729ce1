"""Batched greedy generation and teacher-forced scoring of examples (no metrics here).

Both sort the examples by length before batching (less padding; the batches depend only on the
example set, so results are deterministic) and return results in the input order.
- :func:`generate_answers`: left-padded prompts from ``encode_prompt``, ``do_sample=False``,
  stopping at the tokenizer's eos or an end-of-turn token; the answer text is decoded without
  special tokens and stripped.
- :func:`teacher_forced`: one forward pass per batch over ``[prompt | reference answer]``; per
  example the summed NLL of its answer tokens, their count, and the argmax predictions at those
  positions decoded as text (the "teacher-forced" answer of the FlexLoRA comparison).
- :func:`score_and_generate`: both, encoding each prompt once (generation re-uses the KV cache
  of the scoring pass); this is what ``evaluate`` runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fedlora.data.example import Example
from fedlora.data.formatting import IGNORE_INDEX, encode_example, encode_prompt

__all__ = ["TeacherForced", "stop_token_ids", "generate_answers", "teacher_forced", "score_and_generate"]

Tick = Callable[[int], None]
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class TeacherForced:
    """Teacher-forced result of one example: answer NLL summed over ``tokens`` answer tokens, argmax text."""

    nll_sum: float
    tokens: int
    text: str


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's and model's eos plus known end-of-turn tokens."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
    return sorted(i for i in ids if i is not None)


def _by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _cut_at_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i]
    return tokens


@torch.no_grad()
def generate_answers(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 32, batch_size: int = 8,
                     max_length: int = 256, tick: Tick | None = None) -> list[str]:
    """Greedy answers to ``examples`` (prompt cut to ``max_length`` tokens), in input order."""
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops,
                              pad_token_id=pad_id)
    prompts = [encode_prompt(tokenizer, ex, max_length) for ex in examples]
    answers = [""] * len(examples)
    for idx in _by_length([len(p) for p in prompts], batch_size):
        ids, mask = _left_pad([prompts[i] for i in idx], pad_id)
        out = model.generate(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model)), generation_config=config)
        for row, i in enumerate(idx):
            new = _cut_at_stop(out[row, ids.shape[1] :].tolist(), set(stops))
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
        if tick:
            tick(len(idx))
    return answers


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_kwarg(fn) -> str:
    """The keyword that passes a KV cache to ``fn`` (transformers >= 5.2 renamed ``past_key_values`` to ``cache``)."""
    params = inspect.signature(fn).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def output_cache(out):
    """The KV cache of a model output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _prompt_and_answer(tokenizer, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Generation prompt (``encode_prompt``) and reference answer ids (the labelled part of ``encode_example``)."""
    answer = [t for t in encode_example(tokenizer, ex, max_length)["labels"] if t != IGNORE_INDEX]
    return encode_prompt(tokenizer, ex, max_length), answer


def _layout(prompts, answers, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``[pads | prompt | answer | pads]``: prompts left-padded to end at column ``P``, answers after.

    Returns ``input_ids``, ``attention_mask``, answer ``targets`` (``[b, A]``, ``IGNORE_INDEX`` padded) and ``P``.
    """
    P, A = max(len(p) for p in prompts), max(1, max(len(a) for a in answers))
    ids = torch.full((len(prompts), P + A), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full((len(prompts), A), IGNORE_INDEX, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, P - len(p) : P + len(a)] = torch.tensor(p + a, dtype=torch.long)
        mask[i, P - len(p) : P + len(a)] = 1
        targets[i, : len(a)] = torch.tensor(a, dtype=torch.long)
    return ids, mask, targets, P


def _score(model, tokenizer, ids, mask, targets, P, *, use_cache: bool):
    """One forward pass; per row the answer NLL, token count and argmax text; and the KV cache."""
    device = _device(model)
    keep = targets.shape[1]  # logits of positions P-1 .. P+A-2 predict answer columns P .. P+A-1
    kwargs = {"logits_to_keep": keep + 1} if _accepts_logits_to_keep(model) else {}
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                use_cache=use_cache, **kwargs)
    logits = out.logits[:, -(keep + 1) :][:, :keep].float()
    targets = targets.to(device)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    pred = logits.argmax(dim=-1)
    results = []
    for row in range(ids.shape[0]):
        valid = targets[row] != IGNORE_INDEX
        text = tokenizer.decode(pred[row][valid].tolist(), skip_special_tokens=True).strip()
        results.append(TeacherForced(float(nll[row][valid].sum()), int(valid.sum()), text))
    return results, (output_cache(out) if use_cache else None)


def _generate_cache_kwarg(model) -> str:
    """``generate`` forwards unknown keywords to ``forward``, so the cache goes under ``forward``'s name."""
    return cache_kwarg(model.forward)


def _generate_from_cache(model, tokenizer, ids, mask, P, cache, config) -> list[str]:
    """Greedy answers re-using the prompt part of the scoring pass's KV cache (positions < P-1)."""
    stops = set(config.eos_token_id)
    cache.crop(-(cache.get_seq_length() - (P - 1)))
    device = _device(model)
    out = model.generate(input_ids=ids[:, :P].to(device), attention_mask=mask[:, :P].to(device),
                         generation_config=config, **{_generate_cache_kwarg(model): cache})
    return [tokenizer.decode(_cut_at_stop(out[row, P:].tolist(), stops), skip_special_tokens=True).strip()
            for row in range(ids.shape[0])]


@torch.no_grad()
def score_and_generate(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int | None = 32,
                       batch_size: int = 8, max_length: int = 256,
                       tick: Tick | None = None) -> tuple[list[TeacherForced], list[str] | None]:
    """Teacher-forced scores and (unless ``max_new_tokens`` is None) greedy answers, in input order.

    One forward pass per batch over ``[prompt | reference answer]`` gives the answer NLL and the
    argmax answer; generation then re-uses that pass's KV cache for the prompt, so each prompt is
    encoded once. The prompt is ``encode_prompt``'s (cut to ``max_length``) in both, so the
    teacher-forced and the generated answers continue the same prompt. Only the answer positions
    go through the LM head (``logits_to_keep``).
    """
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = [_prompt_and_answer(tokenizer, ex, max_length) for ex in examples]
    generate = max_new_tokens is not None
    config = GenerationConfig(max_new_tokens=max_new_tokens or 1, do_sample=False, num_beams=1,
                              eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=pad_id)
    scores: list[TeacherForced | None] = [None] * len(examples)
    answers: list[str] = [""] * len(examples)
    for idx in _by_length([len(p) + len(a) for p, a in pairs], batch_size):
        ids, mask, targets, P = _layout([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], pad_id)
        batch_scores, cache = _score(model, tokenizer, ids, mask, targets, P, use_cache=generate)
        texts = _generate_from_cache(model, tokenizer, ids, mask, P, cache, config) if generate else [""] * len(idx)
        for row, i in enumerate(idx):
            scores[i], answers[i] = batch_scores[row], texts[row]
        if tick:
            tick(len(idx))
    return scores, (answers if generate else None)  # type: ignore[return-value]


def teacher_forced(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 8, max_length: int = 256,
                   tick: Tick | None = None) -> list[TeacherForced]:
    """Answer NLL and argmax answer text of each example under teacher forcing, in input order."""
    return score_and_generate(model, tokenizer, examples, max_new_tokens=None, batch_size=batch_size,
                              max_length=max_length, tick=tick)[0]

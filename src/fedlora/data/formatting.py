"""Turn ``Example``s into token ids with the tokenizer's chat template, and batch them.

Prompt = the user turn (instruction, input, and the options of a classification task) followed
by the template's generation prompt; answer = the assistant's text and the end-of-turn token.
Loss is taken on the answer tokens only: prompt tokens get label ``IGNORE_INDEX`` (-100).
Prompt and answer are tokenized separately, so the ids of ``encode_prompt`` are exactly the
prefix that ``encode_example`` trains on, and generation continues where training would.
Tokenizers without a chat template fall back to a plain ``### Response:`` format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlora.data.example import Example

__all__ = ["IGNORE_INDEX", "format_user_message", "encode_example", "encode_prompt", "collate"]

IGNORE_INDEX = -100
_PLAIN_RESPONSE_MARK = "\n\n### Response:\n"


def format_user_message(ex: Example) -> str:
    """The user turn: instruction, then the input, then the options of a classification task."""
    parts = [ex.instruction.strip()]
    if ex.input.strip():
        parts.append(ex.input.strip())
    if ex.choices:
        parts.append("Options: " + ", ".join(ex.choices))
    return "\n\n".join(parts)


def _prompt_and_answer_text(tokenizer, ex: Example) -> tuple[str, str]:
    user = {"role": "user", "content": format_user_message(ex)}
    if getattr(tokenizer, "chat_template", None) is None:
        return user["content"] + _PLAIN_RESPONSE_MARK, ex.output + (tokenizer.eos_token or "")
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": ex.output}], tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        raise ValueError(
            "the tokenizer's chat template renders a conversation whose start differs from its generation "
            f"prompt (prompt={prompt[-60:]!r}), so the answer tokens cannot be located; "
            "use a tokenizer whose template appends the assistant turn after the generation prompt"
        )
    # Drop the whitespace after the end-of-turn token: generation stops at that token anyway.
    return prompt, full[len(prompt):].rstrip()


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the first two thirds and the last third of ``budget`` tokens (instruction and generation prompt survive)."""
    if len(ids) <= budget:
        return ids
    tail = budget // 3
    return ids[: budget - tail] + (ids[len(ids) - tail:] if tail else [])


def encode_example(tokenizer, ex: Example, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels for training on one example.

    Args:
        tokenizer: a Hugging Face tokenizer; its chat template is used when it has one.
        ex: the example.
        max_length: maximum total length in tokens (>= 2).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` of equal length <= ``max_length``; labels are
        ``IGNORE_INDEX`` on the prompt and equal to ``input_ids`` on the answer (incl. end of turn).
        When too long, the prompt is cut in the middle first; the answer keeps at least half of
        ``max_length`` (and is cut at its end only if it alone is longer than that).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 to hold a prompt and an answer token, got {max_length}")
    prompt_text, answer_text = _prompt_and_answer_text(tokenizer, ex)
    prompt, answer = _ids(tokenizer, prompt_text), _ids(tokenizer, answer_text)
    if len(prompt) + len(answer) > max_length:
        answer = answer[: max(max_length - len(prompt), max_length - max_length // 2)]
        prompt = _truncate_middle(prompt, max_length - len(answer))
    return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}


def encode_prompt(tokenizer, ex: Example, max_length: int) -> list[int]:
    """Prompt ids ending with the generation prompt, cut in the middle to at most ``max_length`` tokens."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    prompt_text, _ = _prompt_and_answer_text(tokenizer, ex)
    return _truncate_middle(_ids(tokenizer, prompt_text), max_length)


def collate(batch: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of encoded examples into tensors.

    Args:
        batch: dicts with ``input_ids`` and optionally ``labels`` (defaults to ``input_ids``).
        pad_token_id: id used to pad ``input_ids``.

    Returns:
        ``input_ids``, ``attention_mask`` (1 on real tokens) and ``labels`` (``IGNORE_INDEX`` on
        padding), each a ``[batch, longest]`` int64 tensor.
    """
    if not batch:
        raise ValueError("collate got an empty batch; pass at least one encoded example")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; give the tokenizer a pad token (e.g. tokenizer.pad_token = tokenizer.eos_token)")
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        ids = item["input_ids"]
        item_labels = item.get("labels", ids)
        if len(item_labels) != len(ids):
            raise ValueError(f"batch item {row}: {len(ids)} input_ids but {len(item_labels)} labels; they must match")
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(item_labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

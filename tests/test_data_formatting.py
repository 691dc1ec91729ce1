"""Formatting: chat-template prompts, answer-only labels, truncation and padding."""

from __future__ import annotations

import pytest
import torch

from fedlora.data import IGNORE_INDEX, Example, collate, encode_example, encode_prompt, format_user_message
from fedlora.testing import tiny_tokenizer

CLS = Example("Is this review positive or negative?", "A delight.", "positive", "sent", ("positive", "negative"))
GEN = Example("Write a headline.", "Stocks rose sharply on Monday after ...", "Stocks rally", "headline")


def _answer_text(tok, encoded):
    return tok.decode([i for i, lab in zip(encoded["input_ids"], encoded["labels"]) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("ex", [CLS, GEN])
def test_labels_mask_exactly_the_prompt(tiny_tok, ex):
    # Prepare
    prompt = encode_prompt(tiny_tok, ex, max_length=512)
    # Execute
    encoded = encode_example(tiny_tok, ex, max_length=512)
    # Assert: prompt tokens are the unlabelled prefix; the answer plus end-of-turn is labelled.
    n = len(prompt)
    assert encoded["input_ids"][:n] == prompt
    assert encoded["labels"][:n] == [IGNORE_INDEX] * n
    assert encoded["labels"][n:] == encoded["input_ids"][n:]
    assert _answer_text(tiny_tok, encoded) == ex.output + "<|im_end|>"


def test_prompt_uses_chat_template_and_lists_choices(tiny_tok):
    text = tiny_tok.decode(encode_prompt(tiny_tok, CLS, max_length=512))
    assert text.startswith("<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert "Options: positive, negative" in text
    assert "Options" not in format_user_message(GEN)


def test_long_prompt_is_cut_in_the_middle_and_answer_kept(tiny_tok):
    # Prepare: a long input; the byte-level tokenizer makes one token per character.
    ex = Example("Summarise.", "x" * 500 + " THE END", "short answer", "t")
    # Execute
    encoded = encode_example(tiny_tok, ex, max_length=64)
    # Assert
    text = tiny_tok.decode(encoded["input_ids"])
    assert len(encoded["input_ids"]) == 64
    assert text.startswith("<|im_start|>user\nSummarise.")
    assert text.endswith("<|im_start|>assistant\nshort answer<|im_end|>")
    assert _answer_text(tiny_tok, encoded) == "short answer<|im_end|>"


def test_long_answer_keeps_half_the_budget_for_itself(tiny_tok):
    ex = Example("Q" * 100, "", "a" * 100, "t")
    encoded = encode_example(tiny_tok, ex, max_length=40)
    labelled = sum(lab != IGNORE_INDEX for lab in encoded["labels"])
    assert len(encoded["input_ids"]) == 40
    assert labelled == 20


def test_encode_prompt_respects_max_length(tiny_tok):
    assert len(encode_prompt(tiny_tok, GEN, max_length=16)) == 16


def test_tokenizer_without_chat_template_uses_plain_format():
    tok = tiny_tokenizer()
    tok.chat_template = None
    encoded = encode_example(tok, GEN, max_length=512)
    assert tok.decode(encode_prompt(tok, GEN, 512)).endswith("### Response:\n")
    assert _answer_text(tok, encoded) == "Stocks rally<|im_end|>"


def test_collate_right_pads_and_masks_padding():
    # Prepare
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    # Execute
    out = collate(batch, pad_token_id=0)
    # Assert
    assert torch.equal(out["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(out["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    assert all(t.dtype == torch.long for t in out.values())


def test_collate_errors():
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}], pad_token_id=0)
    with pytest.raises(ValueError, match="pad token"):
        collate([{"input_ids": [1]}], pad_token_id=None)


def test_encoded_batch_trains_tiny_model(tiny_model):
    # Prepare
    model, tok = tiny_model
    batch = collate([encode_example(tok, ex, 128) for ex in (CLS, GEN)], tok.pad_token_id)
    # Execute
    loss = model(**batch).loss
    # Assert: loss is finite and only answer tokens count.
    assert torch.isfinite(loss)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == len(tok("positive<|im_end|>Stocks rally<|im_end|>")["input_ids"])

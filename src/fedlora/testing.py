"""Tiny, offline stand-ins for a tokenizer and a Llama model, for tests and smoke runs.

``tiny_tokenizer()`` is a byte-level tokenizer (every UTF-8 byte is one token, no merges) with
ChatML special tokens and a chat template in the same format as SmolLM2's, so the chat-template
code paths run exactly as they do with the real model. ``tiny_llama()`` is a random 2-layer
``LlamaForCausalLM`` (hidden 64) whose module names match a real Llama's.
Both build in milliseconds and never touch the network.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["CHATML_TEMPLATE", "tiny_tokenizer", "tiny_llama"]

# Same shape as SmolLM2-Instruct's template (ChatML), without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL_TOKENS = ("<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with pad/bos/eos tokens and a ChatML chat template.

    Vocabulary: 4 special tokens (ids 0-3: ``<pad>``, ``<|endoftext|>``, ``<|im_start|>``,
    ``<|im_end|>``) then the 256 byte tokens, 260 in all. ``eos`` is ``<|im_end|>`` (the end of
    an assistant turn, as in SmolLM2-Instruct), ``bos`` is ``<|endoftext|>``.
    Any text round-trips through ``encode``/``decode``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "right"
    return tok


def tiny_llama(seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None):
    """A random fp32 ``LlamaForCausalLM`` (2 layers, hidden 64, 4 heads, 2 KV heads) and its tokenizer.

    Args:
        seed: seeds the weight initialisation; the same seed gives the same weights.
        tokenizer: tokenizer to size the vocabulary from; ``tiny_tokenizer()`` when None.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on CPU.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer

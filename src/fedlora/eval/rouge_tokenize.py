"""A Rouge-L tokenizer that scores every script, equal to ``rouge_score``'s default on ASCII text.

``rouge_score``'s default tokenizer lowercases and keeps ``[a-z0-9]`` runs, so a Telugu, Hindi or
Chinese reference has no token and every answer to it scores 0, right or wrong. The
Super-NaturalInstructions scorer (allenai/natural-instructions, ``eval/automatic/README.md``)
therefore tokenizes its cross-lingual tasks with GPT-2's byte-level BPE instead. fedlora needs no
downloaded tokenizer and one rule for every task:

1. NFKC-normalise and lowercase the text.
2. A token is a maximal run of letters, combining marks and digits (Unicode categories ``L*``,
   ``M*``, ``N*``), so words of spaced scripts (Latin, Cyrillic, Devanagari, Telugu, Arabic,
   Hangul, ...) keep their vowel signs and stay whole.
3. In scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar) every
   character, with the combining marks that follow it, is a token (character-level Rouge, the usual
   choice for Chinese).
4. Tokens that are pure ``[a-z0-9]`` and longer than 3 characters are Porter-stemmed exactly as
   ``rouge_score`` stems them; other tokens are left as they are.

On text whose letters are all ASCII this gives ``rouge_score``'s default tokens, so Rouge-L of
English answers does not change; ``é`` and other accented letters now stay in their word.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["MultilingualTokenizer", "unspaced_script"]

_UNSPACED = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x31F0, 0x31FF),    # Katakana phonetic extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)
_ASCII_WORD = re.compile(r"^[a-z0-9]+$")


def unspaced_script(char: str) -> bool:
    """Whether ``char`` belongs to a script written without spaces between words."""
    code = ord(char)
    return any(low <= code <= high for low, high in _UNSPACED)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter

    return porter.PorterStemmer()  # the stemmer rouge_score.tokenizers.DefaultTokenizer builds


class MultilingualTokenizer:
    """``tokenize(text) -> list[str]``: the interface ``rouge_score.rouge_scorer.RougeScorer(tokenizer=...)`` takes.

    Args:
        use_stemmer: Porter-stem ASCII tokens longer than 3 characters, as ``rouge_score`` does.
    """

    def __init__(self, use_stemmer: bool = True) -> None:
        self.use_stemmer = use_stemmer

    def tokenize(self, text: str) -> list[str]:
        tokens = _split(unicodedata.normalize("NFKC", text).lower())
        if not self.use_stemmer:
            return tokens
        stem = _stemmer().stem
        return [stem(t) if len(t) > 3 and _ASCII_WORD.match(t) else t for t in tokens]


def _split(text: str) -> list[str]:
    tokens: list[str] = []
    word: list[str] = []
    glued = False  # the current word is one character of an unspaced script (marks may follow)
    for ch in text:
        kind = unicodedata.category(ch)[0]
        if kind == "M" and word:
            word.append(ch)
            continue
        if unspaced_script(ch):
            if word:
                tokens.append("".join(word))
            word, glued = [ch], True
            continue
        if kind in "LN":
            if glued:
                tokens.append("".join(word))
                word, glued = [], False
            word.append(ch)
            continue
        if word:
            tokens.append("".join(word))
        word, glued = [], False
    if word:
        tokens.append("".join(word))
    return tokens

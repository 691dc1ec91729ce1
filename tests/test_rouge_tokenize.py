"""Rouge-L over every script: the multilingual tokenizer against hand-computed LCS values.

Rouge-L F = 2PR / (P + R) with P = LCS / |prediction tokens| and R = LCS / |reference tokens|.
"""

import random

import pytest
from rouge_score.tokenizers import DefaultTokenizer

from fedlora.eval.metrics import rouge_l
from fedlora.eval.rouge_tokenize import MultilingualTokenizer


def _f(lcs: int, pred: int, ref: int) -> float:
    p, r = lcs / pred, lcs / ref
    return 2 * p * r / (p + r)


@pytest.mark.parametrize("prediction, reference, lcs, n_pred, n_ref", [
    ("the cat on mat", "The cat sat on the mat.", 4, 4, 6),                  # Latin
    ("నేను ఇంటికి", "నేను ఇంటికి వెళ్తాను", 2, 2, 3),                         # Telugu: words keep their vowel signs
    ("我爱上海", "我爱北京", 2, 4, 4),                                         # Chinese: one token per character
    ("hello friends", "Hello 世界 friends!", 2, 2, 4),                         # mixed: hello, 世, 界, friend
    ("नमस्ते दुनिया", "दुनिया नमस्ते", 1, 2, 2),                                 # Devanagari, order matters
])  # fmt: skip
def test_rouge_l_matches_hand_computed_lcs(prediction, reference, lcs, n_pred, n_ref):
    assert rouge_l(prediction, reference) == pytest.approx(_f(lcs, n_pred, n_ref))


def test_non_latin_reference_no_longer_scores_zero():
    ref = "నేను ఇంటికి వెళ్తాను"
    assert DefaultTokenizer(use_stemmer=True).tokenize(ref) == []  # why the old scores were 0
    assert rouge_l(ref, ref) == pytest.approx(1.0)
    assert rouge_l("completely different", ref) == 0.0


def test_tokens_of_each_script():
    tok = MultilingualTokenizer()
    assert tok.tokenize("నేను ఇంటికి") == ["నేను", "ఇంటికి"]
    assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert tok.tokenize("Hello 世界 friends!") == ["hello", "世", "界", "friend"]
    assert tok.tokenize("ＡＢＣ café") == ["abc", "café"]  # NFKC folds full-width letters; accents stay in the word
    assert tok.tokenize("สวัสดี") == ["ส", "วั", "ส", "ดี"]  # Thai: a character with its following marks


def test_ascii_text_tokenizes_exactly_as_rouge_score_default():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 ,.;:'\"!?-_()\n\t"
    words = ["running", "jumps", "happily", "classification", "the", "cats", "studies", "it's"]
    ours, theirs = MultilingualTokenizer(use_stemmer=True), DefaultTokenizer(use_stemmer=True)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    texts += [" ".join(rng.choice(words) for _ in range(8)) for _ in range(50)]
    for text in texts:
        assert ours.tokenize(text) == theirs.tokenize(text), text

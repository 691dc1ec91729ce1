"""fedlora.eval: metrics on hand-made cases, and evaluate() on the tiny model."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from fedlora.allocation.plan import ClientPlan
from fedlora.client.trainer import LocalTrainer, TrainConfig
from fedlora.data.example import Example
from fedlora.data.formatting import collate, encode_example
from fedlora.eval import (
    choice_loglikelihoods,
    evaluate,
    predict_choices,
    summarize,
    generate_answers,
    is_correct,
    normalize_answer,
    predicted_choice,
    rouge_l,
    score_and_generate,
    teacher_forced,
)
from fedlora.models import model_spec
from fedlora.strategies.base import Payload
from fedlora.testing import tiny_llama

GEN = [Example("Repeat after me.", f"the {w} cat", f"the {w} cat", "repeat") for w in ("red", "big", "old", "sly", "tall")]
CLS = [Example("Is it positive?", t, g, "sentiment", ("positive", "negative")) for t, g in
       (("great film", "positive"), ("awful", "negative"), ("loved it", "positive"))]


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("The Cat, sat!", "the cat sat", 1.0),  # case and punctuation do not count
        ("cats running", "cat runs", 1.0),  # Porter stemming
        ("dog", "cat", 0.0),
        ("", "cat", 0.0),
        ("the cat", "the cat sat on", 2 * (1.0 * 0.5) / 1.5),  # P = 1, R = 1/2
    ],
)
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("positive", "positive", True),
        ("  Positive. ", "positive", True),
        ("positive, because the acting is great", "positive", True),
        ("negative", "positive", False),
        ("I think it is positive", "positive", True),  # the only choice named
        ("positive or negative, hard to say", "positive", True),  # the first word decides
        ("it could be negative or positive", "positive", False),  # two named, none first
        ("", "positive", False),
        ("positively", "positive", False),  # a word boundary must follow
    ],
)
def test_accuracy_rule(answer, gold, correct):
    assert is_correct(answer, gold, ("positive", "negative")) is correct


def test_longest_matching_choice_wins():
    choices = ("not", "not good", "good")
    assert predicted_choice("Not good at all", choices) == "not good"
    assert predicted_choice("not really", choices) == "not"
    assert predicted_choice("It is not good.", choices) == "not good"  # "not" and "good" are inside it
    assert predicted_choice("It is good.", choices) == "good"
    assert predicted_choice("The article is about sport", ("business", "tech")) is None
    assert normalize_answer(" Sci/Tech!\n") == "sci tech"
    assert is_correct("sci-tech", "Sci/Tech", ("Sci/Tech", "Sports"))


# ----------------------------------------------------------------------------- evaluate on the tiny model


def _chatty_tiny():
    """The tiny model with an untied random head: its greedy text is non-empty and varies (the tied
    random model just repeats the last prompt token, a newline)."""
    model, tok = tiny_llama()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    model.model.embed_tokens.weight.data *= 10
    return model, tok


def test_evaluate_returns_every_metric_overall_and_per_task():
    model, tok = tiny_llama()
    result = evaluate(model, tok, GEN + CLS, max_new_tokens=6, batch_size=3)
    for prefix in ("", "task/repeat/"):
        for metric in ("rougeL", "rougeL_se", "rougeL_tf", "rougeL_tf_se", "loss", "loss_se", "n_examples"):
            assert f"{prefix}{metric}" in result
    for prefix in ("", "task/sentiment/"):
        for metric in ("accuracy", "accuracy_se", "majority", "chance", "loss", "n_cls"):
            assert f"{prefix}{metric}" in result
    assert "task/sentiment/rougeL" not in result and "task/repeat/accuracy" not in result  # each kind scored its own way
    assert result["n_examples"] == 8 and result["n_cls"] == 3 and result["n_gen"] == 5 and result["task/sentiment/n_examples"] == 3
    assert result["majority"] == pytest.approx(2 / 3) and result["chance"] == pytest.approx(0.5)
    assert all(0.0 <= result[k] <= 1.0 for k in result if k.endswith(("rougeL", "rougeL_tf", "accuracy")))
    assert evaluate(model, tok, GEN + CLS, max_new_tokens=6, batch_size=3) == result  # deterministic
    fast = evaluate(model, tok, GEN + CLS, generate=False)
    assert "rougeL" not in fast and fast["accuracy"] == result["accuracy"]
    assert fast["task/repeat/loss"] == pytest.approx(result["task/repeat/loss"], rel=1e-5)


def _choice_loglik_by_hand(model, tok, ex, choice):
    enc = encode_example(tok, Example(ex.instruction, ex.input, choice, ex.task, ex.choices), 256)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc["input_ids"]])).logits[0, :-1].double(), -1)
    targets = enc["input_ids"][1:]
    return sum(float(logp[i, t]) for i, (t, label) in enumerate(zip(targets, enc["labels"][1:])) if label != -100)


def test_likelihood_accuracy_picks_the_choice_of_highest_answer_loglikelihood():
    model, tok = _chatty_tiny()
    examples = CLS + [Example("Which topic?", "stocks fell", "business", "topic", ("business", "sport", "tech", "entertainment"))]
    lls = choice_loglikelihoods(model, tok, examples, batch_size=4)
    for ex, row in zip(examples, lls):
        expected = [_choice_loglik_by_hand(model, tok, ex, c) for c in ex.choices]
        assert row == pytest.approx(expected, rel=1e-4, abs=1e-4)
    predicted = predict_choices(lls, examples)
    assert predicted == [ex.choices[max(range(len(r)), key=r.__getitem__)] for ex, r in zip(examples, lls)]
    result = evaluate(model, tok, examples, generate=False)
    correct = [p == ex.output for p, ex in zip(predicted, examples)]
    assert result["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert result["accuracy_se"] == pytest.approx(statistics.stdev(map(float, correct)) / math.sqrt(len(correct)))


def test_majority_rate_is_per_task_and_weighted_by_examples():
    a = [Example("q", str(i), "yes" if i < 3 else "no", "a", ("yes", "no")) for i in range(4)]  # majority 3/4
    b = [Example("q", str(i), "x", "b", ("x", "y", "z")) for i in range(2)]                    # majority 2/2
    rows = [{"nll": 1.0, "tokens": 1, "correct": 0.0} for _ in a + b]
    result = summarize(a + b, rows)
    assert result["majority"] == pytest.approx(5 / 6) and result["task/a/majority"] == 0.75 and result["task/b/majority"] == 1.0
    assert result["chance"] == pytest.approx((4 / 2 + 2 / 3) / 6)


def test_a_classification_answer_outside_its_choices_is_an_error():
    model, tok = tiny_llama()
    with pytest.raises(ValueError, match="not one of its choices"):
        evaluate(model, tok, [Example("q", "x", "maybe", "t", ("yes", "no"))], generate=False)


def test_loss_is_the_mean_answer_token_nll():
    model, tok = tiny_llama()
    batch = collate([encode_example(tok, ex, 256) for ex in GEN[:1]], tok.pad_token_id)
    with torch.no_grad():
        expected = float(model(**batch).loss)
    assert evaluate(model, tok, GEN[:1], generate=False)["loss"] == pytest.approx(expected, rel=1e-5)


def test_teacher_forced_text_is_the_argmax_at_answer_positions():
    model, tok = tiny_llama()
    ex = GEN[0]
    enc = encode_example(tok, ex, 256)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0, :-1]
    answer = [i for i, label in enumerate(enc["labels"][1:]) if label != -100]
    expected = tok.decode(logits[answer].argmax(-1).tolist(), skip_special_tokens=True).strip()
    (result,) = teacher_forced(model, tok, [ex])
    assert result.text == expected and result.tokens == len(answer)


def test_batched_generation_with_left_padding_matches_one_by_one():
    model, tok = _chatty_tiny()
    examples = [GEN[0], CLS[1], Example("Write a long and detailed story please.", "x" * 40, "y", "t")]
    batched = generate_answers(model, tok, examples, max_new_tokens=8, batch_size=3)
    single = [generate_answers(model, tok, [ex], max_new_tokens=8, batch_size=1)[0] for ex in examples]
    assert batched == single and all(batched)


def test_padding_does_not_change_teacher_forced_scores():
    model, tok = tiny_llama()
    examples = GEN + CLS + [Example("A much longer instruction " * 5, "and input", "an answer of several words", "t")]
    batched = teacher_forced(model, tok, examples, batch_size=len(examples))
    single = [teacher_forced(model, tok, [ex], batch_size=1)[0] for ex in examples]
    for b, s in zip(batched, single):
        assert b.tokens == s.tokens and b.text == s.text and b.nll_sum == pytest.approx(s.nll_sum, rel=1e-4)


def test_generation_reusing_the_scoring_cache_matches_plain_generation():
    model, tok = _chatty_tiny()
    examples = GEN + CLS
    _, shared = score_and_generate(model, tok, examples, max_new_tokens=8, batch_size=4)
    assert shared == generate_answers(model, tok, examples, max_new_tokens=8, batch_size=4)
    assert all(shared)


def test_progress_callback_counts_examples():
    model, tok = tiny_llama()
    seen = []
    evaluate(model, tok, GEN, max_new_tokens=2, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_memorised_answer_scores_rouge_one_and_accuracy_one():
    model, tok = tiny_llama()
    model.model.embed_tokens.weight.data *= 10  # the random tiny model's logits are too flat to memorise otherwise
    examples = [Example("Is it positive?", "great film", "yes", "sentiment", ("yes", "no")), Example("Say hi.", "", "hi", "greet")]
    trainer = LocalTrainer(model, tok, TrainConfig(local_steps=40, batch_size=2, lr=1e-2, grad_clip=None))
    plan = ClientPlan.uniform("c", model_spec(model).module_names, 8, 16.0)
    update = trainer.train(Payload(plan), examples, client_seed=0)
    with trainer.use_adapter(update.factors) as adapted:
        assert generate_answers(adapted, tok, examples) == ["yes", "hi"]
        result = evaluate(adapted, tok, examples, max_new_tokens=12)
    assert result["rougeL"] == 1.0 and result["rougeL_tf"] == 1.0 and result["accuracy"] == 1.0
    assert result["loss"] < 0.1 and not math.isnan(result["loss"])

"""fedlora.eval: likelihood accuracy on classification, Rouge-L on generation, answer loss; with standard errors."""

from fedlora.eval.evaluate import evaluate, per_example_scores, summarize
from fedlora.eval.generation import TeacherForced, generate_answers, score_and_generate, stop_token_ids, teacher_forced
from fedlora.eval.likelihood import choice_loglikelihoods, choice_scores, predict_choices
from fedlora.eval.metrics import is_correct, normalize_answer, predicted_choice, rouge_l
from fedlora.eval.stats import PairedComparison, mean_se, paired_comparison, ratio_se

__all__ = [
    "evaluate",
    "per_example_scores",
    "summarize",
    "generate_answers",
    "teacher_forced",
    "score_and_generate",
    "TeacherForced",
    "stop_token_ids",
    "choice_scores",
    "choice_loglikelihoods",
    "predict_choices",
    "rouge_l",
    "normalize_answer",
    "predicted_choice",
    "is_correct",
    "mean_se",
    "ratio_se",
    "paired_comparison",
    "PairedComparison",
]

"""fedlora.eval: Rouge-L on generated and teacher-forced answers, answer loss, classification accuracy."""

from fedlora.eval.evaluate import evaluate
from fedlora.eval.generation import TeacherForced, generate_answers, score_and_generate, stop_token_ids, teacher_forced
from fedlora.eval.metrics import is_correct, normalize_answer, predicted_choice, rouge_l

__all__ = [
    "evaluate",
    "generate_answers",
    "teacher_forced",
    "score_and_generate",
    "TeacherForced",
    "stop_token_ids",
    "rouge_l",
    "normalize_answer",
    "predicted_choice",
    "is_correct",
]

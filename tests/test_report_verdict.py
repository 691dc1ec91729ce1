"""fedlora.report: before/after changes with their standard errors and a verdict per split."""

from __future__ import annotations

import pytest

from fedlora.report import change_verdict, run_summary, verdict_lines


def _eval(split, rnd, **metrics):
    return {"type": "eval", "split": split, "round": rnd, **metrics}


def test_change_verdict_uses_both_standard_errors():
    before, after = {"accuracy": 0.50, "accuracy_se": 0.03}, {"accuracy": 0.62, "accuracy_se": 0.04}
    up, se, verdict = change_verdict(before, after, "accuracy")
    assert up == pytest.approx(0.12) and se == pytest.approx(0.05) and verdict == "better"  # 0.12 > 1.96 x 0.05
    assert change_verdict(before, {"accuracy": 0.55, "accuracy_se": 0.04}, "accuracy")[2] == "no change detected"
    assert change_verdict({"loss": 3.0, "loss_se": 0.01}, {"loss": 2.0, "loss_se": 0.01}, "loss")[2] == "better"
    assert change_verdict({"accuracy": 0.5}, after, "accuracy") is None  # no standard error, no verdict


def test_verdict_line_sets_accuracy_beside_the_majority_rate():
    records = [_eval("heldout", 0, accuracy=0.5, accuracy_se=0.02, majority=0.55, rougeL=0.1, rougeL_se=0.01),
               _eval("heldout", 3, accuracy=0.7, accuracy_se=0.02, majority=0.55, rougeL=0.1, rougeL_se=0.01)]
    (line,) = verdict_lines(run_summary(records))
    assert line.startswith("heldout: likelihood accuracy 0.500 ± 0.020 → 0.700 ± 0.020 (majority rate 0.550; after − majority +0.150)")
    assert ": better" in line and "Rouge-L 0.100 ± 0.010 → 0.100 ± 0.010: no change detected" in line


def test_heldout_tasks_are_reported_related_apart_from_unrelated():
    from fedlora.report import related_map, verdict_lines

    before = {"accuracy": 0.5, "accuracy_se": 0.05, "task/word_sentiment/accuracy": 0.49, "task/word_sentiment/accuracy_se": 0.05,
              "task/word_sentiment/majority": 0.51, "task/guardian_unscramble/rougeL": 0.30, "task/guardian_unscramble/rougeL_se": 0.03}
    after = {"accuracy": 0.74, "accuracy_se": 0.044, "task/word_sentiment/accuracy": 0.74, "task/word_sentiment/accuracy_se": 0.044,
             "task/word_sentiment/majority": 0.51, "task/guardian_unscramble/rougeL": 0.31, "task/guardian_unscramble/rougeL_se": 0.03}
    summary = {"splits": {"heldout": {"before": before, "after": after}},
               "heldout_related": related_map(["word_sentiment=rt_sentiment"])}  # fmt: skip
    lines = verdict_lines(summary)
    related = next(x for x in lines if x.startswith("heldout word_sentiment (related to training task rt_sentiment)"))
    unrelated = next(x for x in lines if x.startswith("heldout guardian_unscramble (unrelated to every training task)"))
    assert "better" in related and "majority rate 0.510" in related
    assert "no change detected" in unrelated
    assert len(verdict_lines({**summary, "heldout_related": {}})) == 1  # without the relation: one line for the split


def test_the_accuracy_plot_draws_the_majority_rate(tmp_path, monkeypatch):
    from fedlora import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path)
    records = [{"type": "eval", "split": "heldout", "round": r, "accuracy": a, "accuracy_se": 0.04, "majority": 0.51}
               for r, a in ((0, 0.49), (5, 0.74))]  # fmt: skip
    report._plot_eval(records, tmp_path / "eval.png")
    (ax,) = figures[0].axes
    majority = [line for line in ax.get_lines() if line.get_label() == "heldout majority rate"]
    assert majority and list(majority[0].get_ydata()) == [0.51, 0.51]


def test_the_eta_counts_the_evaluations_left():
    import io

    from rich.console import Console

    from fedlora.engine.progress import RichProgress

    out = io.StringIO()
    progress = RichProgress(Console(file=out, width=200))
    progress.start(30, 0, 3, evaluations=4)  # round 0 and after each of 3 rounds
    progress.eval_end({"split": "heldout", "round": 0, "seconds": 10.0, "n_examples": 1})
    progress.round_end({"round": 1, "seconds": 20.0, "accepted": 1, "failed": {}, "rejected": {}, "bytes_down": 0, "bytes_up": 0})
    assert progress.eta_seconds() == 2 * 20.0 + 3 * 10.0  # 2 rounds and 3 evaluations left
    assert "ETA 70 s (rounds and evaluations left)" in out.getvalue()
    progress.close()

"""The unit of data: one instruction-following example, and a benchmark of them."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Example", "Benchmark"]


@dataclass(frozen=True)
class Example:
    """One instruction-following example.

    Attributes:
        instruction: what to do, e.g. ``"Classify the topic of this news article."``.
        input: the text to work on; may be empty.
        output: the reference answer.
        task: task name, used for partitioning by task and for per-task metrics.
        choices: the label set for a classification task (``output`` is one of them),
            None for a generation task.
    """

    instruction: str
    input: str
    output: str
    task: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def is_classification(self) -> bool:
        return self.choices is not None

    def to_dict(self) -> dict:
        """A JSON-ready dict (the JSONL format that ``load_jsonl`` reads)."""
        d = {"instruction": self.instruction, "input": self.input, "output": self.output, "task": self.task}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


@dataclass
class Benchmark:
    """A multi-task benchmark split for federated training and evaluation.

    Attributes:
        train: examples of the training tasks, to be partitioned among clients.
        eval: held-out examples of the training tasks (seen tasks, unseen examples).
        heldout: examples of tasks never trained on (FlexLoRA's unseen-task setting).
        train_tasks, heldout_tasks: the task names of each side, sorted.
    """

    train: list[Example]
    eval: list[Example]
    heldout: list[Example]
    train_tasks: tuple[str, ...] = field(default_factory=tuple)
    heldout_tasks: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """A one-line-per-task table of example counts."""
        lines = [f"{'task':<28}{'kind':<7}{'train':>7}{'eval':>7}{'heldout':>9}"]
        kinds = {ex.task: ("cls" if ex.is_classification else "gen") for ex in self.train + self.eval + self.heldout}
        for task in sorted(kinds):
            n = [sum(ex.task == task for ex in part) for part in (self.train, self.eval, self.heldout)]
            lines.append(f"{task:<28}{kinds[task]:<7}{n[0]:>7}{n[1]:>7}{n[2]:>9}")
        return "\n".join(lines)

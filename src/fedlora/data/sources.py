"""Load user data as ``Example``s: JSONL files and Hugging Face ``datasets`` (hub ids or local files).

JSONL: one JSON object per line with string fields ``instruction``, ``input``, ``output`` and
``task``, and an optional list ``choices`` for classification tasks. Blank lines are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedlora.data.example import Example

__all__ = ["REQUIRED_FIELDS", "load_jsonl", "load_hf_dataset", "example_from_record"]

REQUIRED_FIELDS = ("instruction", "input", "output", "task")


def example_from_record(record: dict, where: str = "record") -> Example:
    """Build an ``Example`` from a dict with the JSONL fields; ``where`` names it in errors."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(REQUIRED_FIELDS)}, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; every example needs {list(REQUIRED_FIELDS)} (input may be \"\")")
    wrong = [f for f in REQUIRED_FIELDS if not isinstance(record[f], str)]
    if wrong:
        raise ValueError(f"{where}: field(s) {wrong} must be strings, got {[type(record[f]).__name__ for f in wrong]}")
    choices = record.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a non-empty list of strings or absent, got {choices!r}")
        if record["output"] not in choices:
            raise ValueError(f"{where}: output {record['output']!r} is not one of its choices {choices}")
        choices = tuple(choices)
    return Example(record["instruction"], record["input"], record["output"], record["task"], choices)


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read examples from a JSONL file; errors name the file, the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL data file {str(path)!r} does not exist; check the path in your config")
    examples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg} at column {err.colno})"
                raise ValueError(f"{where}: {problem}; each line must be one JSON object") from None
            examples.append(example_from_record(record, where))
    if not examples:
        raise ValueError(f"{path} holds no examples; write one JSON object per line with fields {list(REQUIRED_FIELDS)}")
    return examples


def _open_dataset(name_or_path: str, split: str):
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and (path / "dataset_info.json").is_file():  # a save_to_disk folder
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.is_file():
        builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
        if builder is None:
            raise ValueError(
                f"cannot tell the format of {str(path)!r}; use a .json/.jsonl/.csv/.parquet file or a dataset folder"
            )
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
    return datasets.load_dataset(name_or_path, split=split)


def load_hf_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    *,
    instruction_field: str = "instruction",
    input_field: str | None = "input",
    output_field: str = "output",
    task_field: str | None = None,
    task_name: str | None = None,
    choices_field: str | None = None,
) -> list[Example]:
    """Read examples from a Hugging Face dataset: a hub id, a local data file, or a dataset folder.

    Args:
        name_or_path: hub id (``"databricks/databricks-dolly-15k"``), a ``.json/.jsonl/.csv/.parquet``
            file, a ``save_to_disk`` folder, or a folder of data files.
        split: the split to read.
        instruction_field, input_field, output_field: column names (``input_field=None``: no input).
        task_field: column holding the task name; else every example gets ``task_name``.
        task_name: task of every example when ``task_field`` is None (default: the dataset's name).
        choices_field: optional column with the label set of classification examples.
    """
    dataset = _open_dataset(str(name_or_path), split)
    wanted = [instruction_field, output_field] + [f for f in (input_field, task_field, choices_field) if f]
    missing = [f for f in wanted if f not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset {str(name_or_path)!r} split {split!r} has no column(s) {missing}; "
            f"its columns are {dataset.column_names}"
        )
    default_task = task_name or Path(str(name_or_path)).stem or str(name_or_path)
    examples = []
    for index, row in enumerate(dataset):
        record = {
            "instruction": str(row[instruction_field]),
            "input": "" if input_field is None or row[input_field] is None else str(row[input_field]),
            "output": str(row[output_field]),
            "task": str(row[task_field]) if task_field else default_task,
        }
        if choices_field and row[choices_field] is not None:
            record["choices"] = list(row[choices_field])
        examples.append(example_from_record(record, f"{name_or_path}[{split}][{index}]"))
    return examples

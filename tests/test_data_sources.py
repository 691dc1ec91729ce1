"""JSONL and Hugging Face dataset sources, from local files only (no hub)."""

from __future__ import annotations

import json

import pytest

from fedlora.data import Example, load_hf_dataset, load_jsonl

RECORDS = [
    {"instruction": "Classify.", "input": "great film", "output": "pos", "task": "sent", "choices": ["pos", "neg"]},
    {"instruction": "Write a title.", "input": "", "output": "Hello", "task": "title"},
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_examples_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(RECORDS[0]), "", json.dumps(RECORDS[1])])
    assert load_jsonl(path) == [
        Example("Classify.", "great film", "pos", "sent", ("pos", "neg")),
        Example("Write a title.", "", "Hello", "title"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"instruction": "x", "input": "", "output": "y"}', r"d.jsonl:2: missing field\(s\) \['task'\]"),
        ("not json", r"d.jsonl:2: not valid JSON"),
        ('["a list"]', r"d.jsonl:2: expected a JSON object"),
        ('{"instruction": "x", "input": 3, "output": "y", "task": "t"}', r"d.jsonl:2: field\(s\) \['input'\] must be strings"),
        ('{"instruction": "x", "input": "", "output": "y", "task": "t", "choices": ["a"]}', r"d.jsonl:2: output 'y' is not one of"),
        ('{"instruction": "x", "input": "", "output": "y", "task": "t", "choices": "y"}', r"d.jsonl:2: 'choices' must be"),
    ],
)
def test_load_jsonl_errors_name_line_and_problem(tmp_path, line, message):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(RECORDS[1]), line])
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_load_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no examples"):
        load_jsonl(write_lines(tmp_path / "empty.jsonl", [""]))


def test_load_hf_dataset_from_local_json_file_with_renamed_columns(tmp_path):
    # Prepare: an Alpaca/Dolly-like file with other column names.
    rows = [{"prompt": f"Q{i}", "context": f"c{i}", "response": f"A{i}", "category": "qa" if i % 2 else "chat"} for i in range(4)]
    path = write_lines(tmp_path / "dolly.jsonl", [json.dumps(r) for r in rows])
    # Execute
    examples = load_hf_dataset(
        path, instruction_field="prompt", input_field="context", output_field="response", task_field="category"
    )
    # Assert
    assert examples[1] == Example("Q1", "c1", "A1", "qa")
    assert [ex.task for ex in examples] == ["chat", "qa", "chat", "qa"]


def test_load_hf_dataset_from_saved_dataset_folder(tmp_path):
    import datasets

    # Prepare
    data = {"instruction": ["a", "b"], "output": ["1", "2"], "labels": [["1", "2"], ["1", "2"]]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(data)}).save_to_disk(str(tmp_path / "ds"))
    # Execute
    examples = load_hf_dataset(tmp_path / "ds", "test", input_field=None, task_name="digits", choices_field="labels")
    # Assert
    assert examples == [Example("a", "", "1", "digits", ("1", "2")), Example("b", "", "2", "digits", ("1", "2"))]


def test_load_hf_dataset_missing_column_lists_columns(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"q": "x", "a": "y"})])
    with pytest.raises(ValueError, match=r"no column\(s\) \['instruction', 'output', 'input'\]; its columns are \['q', 'a'\]"):
        load_hf_dataset(path)

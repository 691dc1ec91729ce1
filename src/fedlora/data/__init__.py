"""fedlora.data: examples, the bundled benchmark, data sources, partitioners and formatting."""

from fedlora.data.bundled import BUNDLED_TASKS, DEFAULT_HELDOUT_TASKS, build_bundled_examples, load_bundled_benchmark
from fedlora.data.example import Benchmark, Example
from fedlora.data.formatting import IGNORE_INDEX, collate, encode_example, encode_prompt, format_user_message
from fedlora.data.partition import (
    PARTITIONERS,
    partition_by_task,
    partition_dirichlet,
    partition_examples,
    partition_iid,
)
from fedlora.data.sources import load_hf_dataset, load_jsonl

__all__ = [
    "BUNDLED_TASKS",
    "DEFAULT_HELDOUT_TASKS",
    "IGNORE_INDEX",
    "PARTITIONERS",
    "Benchmark",
    "Example",
    "build_bundled_examples",
    "collate",
    "encode_example",
    "encode_prompt",
    "format_user_message",
    "load_bundled_benchmark",
    "load_hf_dataset",
    "load_jsonl",
    "partition_by_task",
    "partition_dirichlet",
    "partition_examples",
    "partition_iid",
]

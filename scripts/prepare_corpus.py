"""Prepares the packaged corpus `lee-news` from the gensim wheel's test data.

Run once by a maintainer (the output is committed under agentqat/corpora/):
    pip download --no-deps gensim==4.4.0 -d /tmp/g && python scripts/prepare_corpus.py /tmp/g/gensim-4.4.0-*.whl

The source file holds 300 ABC news articles, one per line, 7 of them twice; duplicates are dropped (first
occurrence kept), leaving 293. Articles are assigned whole to one split, in file order, so no text is shared
between splits: evaluation (the first 117), calibration (the next 117), held-out (the last 59; reserved for
tasks such as cloze and questions, never calibrated or tuned on).
"""

import sys
import zipfile
from pathlib import Path

SOURCE_MEMBER = "gensim/test/test_data/lee_background.cor"
SPLITS = {"evaluation": (0, 117), "calibration": (117, 234), "heldout": (234, 293)}
OUT_DIR = Path(__file__).resolve().parent.parent / "agentqat" / "corpora"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        articles = [" ".join(line.split()) for line in archive.read(SOURCE_MEMBER).decode("utf-8").splitlines()]
    articles = list(dict.fromkeys(a for a in articles if a))  # drops repeated articles, keeps order
    assert len(articles) == 293, f"expected 293 distinct articles, found {len(articles)}"
    for split, (start, stop) in SPLITS.items():
        path = OUT_DIR / f"lee-news.{split}.txt"
        path.write_text("\n".join(articles[start:stop]) + "\n", encoding="utf-8")
        print(f"{path.name}: {stop - start} articles, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])

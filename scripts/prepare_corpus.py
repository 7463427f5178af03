"""Prepares the packaged corpus `lee-news` from the gensim wheel's test data.

Run once by a maintainer (the output is committed under agentqat/corpora/):
    pip download --no-deps gensim==4.4.0 -d /tmp/g && python scripts/prepare_corpus.py /tmp/g/gensim-4.4.0-*.whl

The source file holds 300 ABC news articles, one per line, 7 of them twice; duplicates are dropped (first
occurrence kept), leaving 293. Articles are assigned whole to one split, in file order, so no text is shared
between splits: evaluation (the first 117), calibration (the next 117), held-out (the last 59; reserved for
tasks such as cloze and questions, never calibrated or tuned on).

The test split comes from another file of the same wheel, `lee.cor`: the 50 articles of the Lee et al. (2005)
human-similarity test set (Latin-1, none of them among the 300 background articles). Nothing in a search reads
it: only the re-evaluation of final winners (agentqat.study) does.
"""

import sys
import zipfile
from pathlib import Path

SOURCE_MEMBER = "gensim/test/test_data/lee_background.cor"
TEST_MEMBER = "gensim/test/test_data/lee.cor"
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
    with zipfile.ZipFile(wheel) as archive:
        tests = [" ".join(line.split()) for line in archive.read(TEST_MEMBER).decode("latin-1").splitlines()]
    tests = list(dict.fromkeys(a for a in tests if a))
    assert len(tests) == 50 and not set(tests) & set(articles), "expected 50 test articles unseen in the background"
    path = OUT_DIR / "lee-news.test.txt"
    path.write_text("\n".join(tests) + "\n", encoding="utf-8")
    print(f"{path.name}: {len(tests)} articles, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])

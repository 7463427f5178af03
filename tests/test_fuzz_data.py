"""Corpus files passed by path, fuzzed: any text or bytes loads as a corpus with three non-empty splits or ends
in one UserError line; paths that cannot be looked at and files too large are one line too."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from agentqat.data import MAX_FILE_BYTES, SPLITS, load_corpus
from agentqat.errors import UserError


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "corpus.txt"


def assert_corpus_or_one_line(path) -> None:
    try:
        corpus = load_corpus(str(path))
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 500, str(error)
    else:
        assert all(corpus.split(split).strip() for split in SPLITS)


words = st.text(st.characters(codec="utf-8"), max_size=12)
documents = st.lists(st.lists(words, max_size=8).map(" ".join), max_size=12).map("\n".join)


@FUZZ
@given(content=(documents | st.text(max_size=400)).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=2000))
def test_any_text_or_bytes_are_a_corpus_or_one_line(content, corpus_file):
    corpus_file.write_bytes(content)
    assert_corpus_or_one_line(corpus_file)


def test_paths_that_cannot_be_read_and_huge_files_are_one_line(tmp_path):
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as sparse:
        sparse.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(UserError, match="corpora are at most"):
        load_corpus(str(huge))
    for spec in ("x" * 5000, "x" * 5000 + ".txt", str(tmp_path)):
        with pytest.raises(UserError, match="cannot be read|is not a file"):
            load_corpus(spec)

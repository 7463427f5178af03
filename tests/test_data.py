"""Corpora and token windows."""

import itertools
import re
from pathlib import Path

import pytest
import torch

import agentqat
from agentqat.data import SEARCH_SPLITS, SPLITS, load_corpus, sample_windows, tokenize
from agentqat.errors import UserError


def test_packaged_corpus_splits_share_no_document():
    corpus = load_corpus("lee-news")
    assert [len(corpus.split(s).splitlines()) for s in SPLITS] == [117, 117, 59, 50]
    documents = {split: set(corpus.split(split).splitlines()) for split in SPLITS}
    for first, second in itertools.combinations(SPLITS, 2):
        assert not documents[first] & documents[second], (first, second)


def test_the_test_split_shares_no_passage_with_what_a_search_reads():
    """No 12-word passage of the test articles appears in the evaluation, calibration or held-out text."""
    corpus = load_corpus("lee-news")

    def passages(text):
        words = text.split()
        return {" ".join(words[i : i + 12]) for i in range(len(words) - 11)}

    searched = set().union(*(passages(corpus.split(split)) for split in SEARCH_SPLITS))
    assert "test" not in SEARCH_SPLITS and not passages(corpus.test) & searched


def test_no_search_code_reads_the_test_split():
    """The arena (stages, calibration, tasks, scores), the generators and the evolve loop never name the test
    split: only agentqat.study, the report, the CLI and data.py itself do (and rundir/paths.py names the folder
    DIR/test/ the studies write to)."""
    package = Path(agentqat.__file__).parent
    readers = {"data.py", "rundir/paths.py"}
    allowed = {package / "study", package / "report", package / "cli"}
    pattern = re.compile(r"""\.test\b|["']test["']|split\(\s*["']test""")
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if str(path.relative_to(package)) not in readers and not any(folder in path.parents for folder in allowed)
        and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_user_text_file_is_cut_in_order_into_four_splits(tmp_path):
    path = tmp_path / "notes.txt"
    lines = [f"document number {i:02d} " + "word " * 50 for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    corpus = load_corpus(str(path))
    assert corpus.name == "notes"
    assert [len(corpus.split(s).splitlines()) for s in ("evaluation", "calibration", "heldout", "test")] == [8, 8, 2, 2]
    rebuilt = [line for s in ("evaluation", "calibration", "heldout", "test") for line in corpus.split(s).splitlines()]
    assert [line.strip() for line in rebuilt] == [line.strip() for line in lines]


def test_a_single_long_document_is_still_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(" ".join(f"w{i}" for i in range(1000)))
    corpus = load_corpus(str(path))
    assert all(corpus.split(s) for s in SPLITS)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"  \n\n ", "is empty"),
        (b"\x7fELF\x00\x00\x01binary", "looks binary"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
    ids=["missing", "empty", "blank", "binary", "latin-1"],
)
def test_bad_corpus_files(tmp_path, content, expected):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        load_corpus(str(path))


def test_unknown_corpus_name():
    with pytest.raises(UserError, match="unknown corpus 'wikitext'"):
        load_corpus("wikitext")


def test_unknown_split():
    with pytest.raises(UserError, match="unknown corpus split"):
        load_corpus().split("train")


IDS = torch.arange(10_000)


def test_windows_are_deterministic_per_seed_and_differ_across_seeds():
    first = sample_windows(IDS, 100, 5, seed=3)
    assert torch.equal(first, sample_windows(IDS, 100, 5, seed=3))
    assert not torch.equal(first, sample_windows(IDS, 100, 5, seed=4))


def test_windows_never_overlap_within_or_across_sets():
    sets = [sample_windows(IDS, 100, 10, seed=0, offset=10 * k) for k in range(3)]
    tokens = torch.cat([s.flatten() for s in sets])
    assert len(torch.unique(tokens)) == len(tokens)
    for window in torch.cat(sets):
        assert torch.equal(window, torch.arange(window[0], window[0] + 100))  # contiguous text
        assert window[0] % 100 == 0  # on the grid


def test_too_short_text_is_a_clear_error():
    with pytest.raises(UserError, match="holds 250 tokens: 2 windows of 100, but 3 are needed"):
        sample_windows(torch.arange(250), 100, 3, seed=0)


def test_tokenize_joins_documents_with_newlines(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = tokenize(tokenizer, "first document\nsecond document\n")
    assert tokenizer.decode(ids) == "first document\nsecond document\n"

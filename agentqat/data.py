"""Text corpora split into calibration / evaluation / held-out / test parts, and seeded token windows over them.

The test split is for the re-evaluation of final winners only (agentqat.study): no arena stage, calibration,
score or task reads it (tests/test_data.py checks the code for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from agentqat.defaults import DEFAULT_CORPUS
from agentqat.errors import UserError

SPLITS = ("calibration", "evaluation", "heldout", "test")
SEARCH_SPLITS = ("calibration", "evaluation", "heldout")  # what a search may read; never "test"
PACKAGED_CORPORA = ("lee-news",)
# A user's single text file is cut at document (line) boundaries into these shares, in file order. The cuts at
# 40% and 80% are where they were before the test split came: the last 20% went to heldout and is now halved.
USER_SPLIT_SHARES = {"evaluation": 0.4, "calibration": 0.4, "heldout": 0.1, "test": 0.1}
MAX_FILE_BYTES = 512 * 1024**2  # every split is tokenized whole


@dataclass(frozen=True)
class Corpus:
    """A corpus's four non-overlapping splits as text, one document per line, and where it came from."""

    name: str
    source: str
    calibration: str
    evaluation: str
    heldout: str
    test: str  # read only by the re-evaluation of final winners (agentqat.study)

    def split(self, name: str) -> str:
        """Returns the text of split `name` (calibration, evaluation, heldout or test)."""
        if name not in SPLITS:
            raise UserError(f"unknown corpus split '{name}'", f"use one of {', '.join(SPLITS)}")
        return getattr(self, name)


def _file_size(path: Path) -> int | None:
    """Returns the size of the file at `path`, None when no file is there; raises UserError for a path that
    cannot be looked at (a name too long, a NUL byte, no permission)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except (OSError, ValueError) as error:
        raise UserError(f"corpus path {str(path)[:200]!r} cannot be read ({error.__class__.__name__})", "check the path") from None


def _read_text_file(path: Path) -> str:
    size = _file_size(path)
    if size is None and not path.exists():
        raise UserError(f"corpus file {path} does not exist", "check the path")
    if size is None:
        raise UserError(f"corpus path {path} is not a file", "pass a UTF-8 text file")
    if size > MAX_FILE_BYTES:
        raise UserError(f"corpus file {path} is {size:,} bytes; corpora are at most {MAX_FILE_BYTES:,}", "pass a shorter text file")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise UserError(f"corpus file {path} looks binary (it holds NUL bytes)", "pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"corpus file {path} is not UTF-8 text ({error.reason})", "convert it to UTF-8") from error
    if not text.strip():
        raise UserError(f"corpus file {path} is empty", "pass a file with text in it")
    return text


def _split_documents(documents: list[str]) -> dict[str, str]:
    """Returns the documents cut, in order and at document boundaries, into the USER_SPLIT_SHARES parts."""
    if len(documents) < len(USER_SPLIT_SHARES):
        # One or two long documents: cut them into 20 paragraphs of whole words instead.
        words = " ".join(documents).split()
        size = max(1, len(words) // 20)
        documents = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    cumulative = np.cumsum([len(d) for d in documents])
    bounds = [0]
    for part, share_end in enumerate(np.cumsum(list(USER_SPLIT_SHARES.values()))[:-1], start=1):
        cut = int(np.searchsorted(cumulative, cumulative[-1] * share_end)) + 1
        parts_left = len(USER_SPLIT_SHARES) - part
        bounds.append(min(max(cut, bounds[-1] + 1), len(documents) - parts_left))
    bounds.append(len(documents))
    return {
        split: "\n".join(documents[bounds[i] : bounds[i + 1]]) for i, split in enumerate(USER_SPLIT_SHARES)
    }


def load_corpus(spec: str = DEFAULT_CORPUS) -> Corpus:
    """Returns the corpus named by `spec`: a packaged corpus, a text file, or 'hf:DATASET[:CONFIG]'."""
    if spec in PACKAGED_CORPORA:
        folder = resources.files("agentqat") / "corpora"
        texts = {split: (folder / f"{spec}.{split}.txt").read_text(encoding="utf-8") for split in SPLITS}
        return Corpus(name=spec, source=f"packaged:{spec}", **texts)
    if spec.startswith("hf:"):
        return _load_hf_dataset(spec)
    path = Path(spec).expanduser()
    if "/" not in spec and "." not in spec and _file_size(path) is None and not path.exists():
        raise UserError(
            f"unknown corpus '{spec}'",
            f"use a packaged corpus ({', '.join(PACKAGED_CORPORA)}), a text file, or hf:DATASET[:CONFIG]",
        )
    documents = [line.strip() for line in _read_text_file(path).splitlines() if line.strip()]
    splits = _split_documents(documents)
    if not all(splits.values()):
        raise UserError(
            f"corpus file {path} holds too little text to cut into {', '.join(USER_SPLIT_SHARES)} parts",
            "pass a file with more text (one document per line)",
        )
    return Corpus(name=path.stem, source=str(path), **splits)


def _load_hf_dataset(spec: str) -> Corpus:
    name, _, config = spec[3:].partition(":")
    try:
        import datasets
    except ImportError as error:
        raise UserError(f"corpus '{spec}' needs the 'datasets' package", "pip install datasets") from error
    try:
        dataset = datasets.load_dataset(name, config or None, split="train")
    except Exception as error:  # datasets raises many types when offline or the name is wrong
        raise UserError(
            f"cannot load dataset '{name}' ({error.__class__.__name__}: {error})",
            "check the name; offline machines need the dataset in the local datasets cache",
        ) from error
    column = next((c for c in ("text", "content", "document") if c in dataset.column_names), None)
    if column is None:
        raise UserError(f"dataset '{name}' has no text column", "use a dataset with a 'text' column")
    documents = [" ".join(str(t).split()) for t in dataset[column] if str(t).strip()]
    if not documents:
        raise UserError(f"dataset '{name}' has no text", "use a dataset with text in it")
    return Corpus(name=name, source=spec, **_split_documents(documents))


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Returns the token ids of `text` (documents tokenized one by one and joined by a newline)."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    documents = [line for line in text.splitlines() if line.strip()]
    ids: list[int] = []
    for encoded in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.extend(newline)
    return torch.tensor(ids, dtype=torch.long)


def window_count(num_tokens: int, length: int, bos: int | None = None) -> int:
    """Returns how many disjoint windows of `length` tokens fit in `num_tokens` text tokens (with `bos`, each
    window holds the BOS token and `length - 1` text tokens)."""
    return num_tokens // (length - (bos is not None))


def sample_windows(
    ids: torch.Tensor, length: int, count: int, seed: int, offset: int = 0, bos: int | None = None
) -> torch.Tensor:
    """Returns `count` disjoint windows of `length` tokens, shape (count, length), chosen by `seed`.

    Windows sit on a grid of `length` text tokens (`length - 1` when `bos` is a token id: each window then opens
    with it, as the model read its training text and as llama.cpp's perplexity tool feeds each chunk), so no two
    overlap. The grid's slots are shuffled once per seed and the windows are slots [offset, offset + count) of that
    order: calls with the same seed and non-overlapping offset ranges never share a token.
    """
    text = length - (bos is not None)
    available = window_count(len(ids), length, bos)
    if available < offset + count:
        raise UserError(
            f"the text holds {len(ids)} tokens: {available} windows of {length}, but {offset + count} are needed",
            "use fewer or shorter windows, or a longer corpus",
        )
    order = np.random.default_rng(seed).permutation(available)
    windows = torch.stack([ids[slot * text : (slot + 1) * text] for slot in order[offset : offset + count]])
    if bos is None:
        return windows
    return torch.cat([torch.full((count, 1), bos, dtype=windows.dtype), windows], dim=1)


def unseen_text(source: str, corpus_spec: str) -> str:
    """Returns the unseen text that final winners are re-evaluated on: the test split of `corpus_spec` when
    `source` is "test" (its held-out split for "heldout": text no search reads, that a choice may be made on),
    else the whole of the text file `source` (one document per line)."""
    if source in ("test", "heldout"):
        return getattr(load_corpus(corpus_spec), source)
    return "\n".join(line.strip() for line in _read_text_file(Path(source).expanduser()).splitlines() if line.strip())

"""llama.cpp's measurement of a GGUF file against the base model (`agentqat engine-eval`), and llama.cpp's stock
recipes made by its own `llama-quantize`, with or without an importance matrix from the calibration split.

Files kept under `<cache>/engine-files/<model key>/` (made once, reused; none is a model the search wrote):

    base-f32.gguf                        the model as llama.cpp's converter writes it (the reference)
    text/<corpus>.<split>.txt            a split's documents, one per line (what the tools read)
    imatrix-<corpus>-c<ctx>-n<chunks>.gguf   llama-imatrix over the calibration split only
    logits-<text key>-c<ctx>-n<chunks>.kld   the base's logits on a text (llama-perplexity --kl-divergence-base)
    stock/<TYPE>[-imatrix].gguf          llama-quantize's stock recipe of TYPE
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from agentqat.data import SPLITS, load_corpus
from agentqat.defaults import CALIBRATION_WINDOWS, WINDOW_TOKENS, cache_dir
from agentqat.engines.gguf_fold import fold_record, write_folded_base
from agentqat.engines.gguf_tensors import dequantized_copy
from agentqat.engines.llama_cpp import (
    KlFigures,
    LlamaCpp,
    base_logits,
    build_llama_cpp,
    convert_to_gguf,
    importance_matrix,
    kl_divergence,
    quantize,
)
from agentqat.errors import UserError
from agentqat.models import BUILTIN_MODELS, builtin_gguf_path, resolve_model_directory
from agentqat.progress import Reporter, phase

ENGINE_CHUNKS = 16  # chunks llama-perplexity scores (fewer where the text holds fewer)
# llama-quantize's stock types and mixes that run on any row width (k- and i-quants fall back where rows are not
# multiples of 256, as llama-quantize does by itself).
STOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_XS", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K")


@dataclass(frozen=True)
class EngineFigures:
    """A GGUF file measured by llama.cpp: its KL figures against the base, its bytes and bits per weight."""

    file: str
    file_bytes: int
    bits_per_weight: float
    text: str
    kl: KlFigures

    def as_dict(self) -> dict:
        """Returns the figures as a JSON-ready dict."""
        return {**asdict(self), "kl": asdict(self.kl)}


def _model_key(spec: str) -> str:
    if spec in BUILTIN_MODELS:
        return spec
    return f"{Path(spec).name}-{hashlib.sha256(str(Path(spec).expanduser().resolve()).encode()).hexdigest()[:12]}"


def _unquantized(path: Path) -> bool:
    from gguf import GGUFReader

    return path.is_file() and all(t.tensor_type.name in ("F32", "F16", "BF16") for t in GGUFReader(str(path)).tensors)


def work_directory(spec: str) -> Path:
    """Returns the directory of the engine's files for the model `spec`."""
    return cache_dir() / "engine-files" / _model_key(spec)


class EngineWorkspace:
    """The engine's files for one model and corpus, each made on first use under a lock."""

    def __init__(self, model: str, corpus: str, reporter: Reporter | None = None):
        self.model, self.corpus, self.reporter = model, corpus, reporter
        self.directory = work_directory(model)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.engine: LlamaCpp = build_llama_cpp(reporter)

    def made(self, target: Path, name: str, detail: str, make) -> Path:
        """Returns `target`, made by `make(target)` under a lock (the phase `name`) when it does not exist yet."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not target.exists():
                with phase(self.reporter, name, detail=detail):
                    make(target)
        return target

    def base(self) -> Path:
        """Returns the unquantized GGUF of the model: a .gguf model whose tensors are all F32/F16/BF16 as it is, a
        directory `agentqat fold-awq` wrote as its source's base with the fold applied (`agentqat.engines.gguf_fold`),
        else the f32 file llama.cpp's converter writes from the model's Hugging Face directory."""
        if self.model.endswith(".gguf") and _unquantized(Path(self.model).expanduser()):
            return Path(self.model).expanduser()
        directory = resolve_model_directory(self.model, self.reporter)
        if directory is None:
            raise UserError(f"engine measurements need a local model; '{self.model}' is a hub id", "pass a directory or a .gguf file")
        record = fold_record(directory)
        if record is not None:  # written by agentqat fold-awq: its source's base with the scales applied
            source = EngineWorkspace(record["model"], self.corpus, self.reporter).base()
            return self.made(self.directory / "base-f32.gguf", "folding AWQ's scales into the base GGUF", self.model,
                             lambda target: write_folded_base(directory, source, target))  # fmt: skip
        return self.made(self.directory / "base-f32.gguf", "converting the base model to GGUF", self.model, self._convert)

    def _convert(self, target: Path) -> Path:
        """Writes the f32 base with llama.cpp's converter from the model's directory; a model loaded from a GGUF
        file whose tokenizer the converter does not know (Gemma 3's, in this llama.cpp) is that file dequantized
        instead: the same values, tokenizer and metadata."""
        try:
            return convert_to_gguf(self.engine, resolve_model_directory(self.model, self.reporter), target)
        except UserError as error:
            source = builtin_gguf_path(self.model) if self.model in BUILTIN_MODELS else Path(self.model).expanduser()
            if "pre-tokenizer was not recognized" not in str(error) or source.suffix != ".gguf":
                raise
            return dequantized_copy(source, target)

    def text(self, split_or_file: str) -> Path:
        """Returns a text file the tools read: a split of the corpus (one document per line), or the file given."""
        if split_or_file not in SPLITS:
            path = Path(split_or_file).expanduser()
            if not path.is_file():
                raise UserError(f"text {split_or_file!r} is neither a split ({', '.join(SPLITS)}) nor a file", "pass a split name or a text file")
            return path
        corpus = load_corpus(self.corpus)
        name = hashlib.sha256(corpus.source.encode()).hexdigest()[:8]
        target = self.directory / "text" / f"{corpus.name}-{name}.{split_or_file}.txt"

        def write(path: Path) -> None:
            path.write_text(corpus.split(split_or_file).strip() + "\n", encoding="utf-8")

        return self.made(target, "writing text", split_or_file, write)

    def imatrix(self, chunks: int = CALIBRATION_WINDOWS, context: int = WINDOW_TOKENS) -> Path:
        """Returns llama-imatrix's importance matrix over the calibration split (never evaluation or test text)."""
        text = self.text("calibration")
        target = self.directory / f"imatrix-{text.stem.rsplit('.', 1)[0]}-c{context}-n{chunks}.gguf"
        return self.made(target, "llama-imatrix on the calibration split", f"{chunks} x {context} tokens",
                          lambda path: importance_matrix(self.engine, self.base(), text, path, chunks, context))  # fmt: skip

    def logits(self, text: Path, chunks: int, context: int) -> Path:
        """Returns the base model's logits file for `text` (llama-perplexity --kl-divergence-base)."""
        key = hashlib.sha256(f"{text.resolve()}:{text.stat().st_size}:{text.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        target = self.directory / f"logits-{text.stem}-{key}-c{context}-n{chunks}.kld"
        return self.made(target, "base logits (llama-perplexity)", f"{chunks} chunks of {context} tokens of {text.name}",
                          lambda path: base_logits(self.engine, self.base(), text, path, chunks, context))  # fmt: skip

    def stock(self, type_name: str, with_imatrix: bool) -> Path:
        """Returns llama-quantize's stock `type_name` file of the model, with the calibration imatrix or without."""
        if type_name.upper() not in STOCK_TYPES:
            raise UserError(f"unknown stock type {type_name!r}", f"use one of {', '.join(STOCK_TYPES)}")
        type_name = type_name.upper()
        target = self.directory / "stock" / f"{type_name}{'-imatrix' if with_imatrix else ''}.gguf"
        imatrix = self.imatrix() if with_imatrix else None
        return self.made(target, "llama-quantize", f"{type_name}{' with the imatrix' if with_imatrix else ''}",
                          lambda path: quantize(self.engine, self.base(), path, type_name, imatrix))  # fmt: skip

    def measure(self, model_file: Path, text: str, chunks: int = ENGINE_CHUNKS, context: int = WINDOW_TOKENS) -> EngineFigures:
        """Returns llama.cpp's figures of `model_file` against the base model on `text` (a split or a file)."""
        from gguf import GGUFReader

        if not Path(model_file).is_file():
            raise UserError(f"GGUF file {model_file} does not exist", "check the path")
        text_file = self.text(text)
        logits = self.logits(text_file, chunks, context)
        with phase(self.reporter, "llama-perplexity --kl-divergence", detail=Path(model_file).name):
            figures = kl_divergence(self.engine, Path(model_file), logits, chunks, context)
        reader = GGUFReader(str(model_file))
        weights = sum(int(tensor.n_elements) for tensor in reader.tensors)
        size = Path(model_file).stat().st_size
        return EngineFigures(str(model_file), size, 8 * size / weights, text, figures)

